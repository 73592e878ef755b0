"""One decision in one place: every task, format and tuning method has its row in each table that holds its code,
and no table holds a row for something the plan does not know."""
from __future__ import annotations

from runner.plan.methods import METHODS
from runner.plan.tasks import TASKS


def test_every_task_has_its_code_rows():
    from runner.commands.inference import PREDICT
    from runner.data.load import PREPARE
    from runner.evaluate.measure import EVAL_FEATURES, LABEL_PREDICTIONS, PAIR_SCORES
    from runner.train.task_code import TASK_CODE

    assert set(TASK_CODE) == set(TASKS) == set(PREDICT)
    assert set(PREPARE) <= set(TASKS) and set(EVAL_FEATURES) <= set(TASKS)
    assert set(LABEL_PREDICTIONS) == {name for name, task in TASKS.items() if task.predicts_labels}
    assert set(PAIR_SCORES) == {name for name, task in TASKS.items() if task.scores_pairs}


def test_every_task_has_its_memory_kind_and_metrics_it_can_compute():
    from runner.plan.memory import KINDS
    from runner.plan.tasks import GENERATIVE, LABEL_METRICS, PAIR_METRICS

    for name, task in TASKS.items():
        assert task.memory_kind in KINDS, name
        assert set(task.default_metrics) <= set(task.metrics), name
        assert task.scores_pairs == bool(set(task.metrics) & set(PAIR_METRICS)), name
        assert task.predicts_labels == bool(set(task.metrics) & set(LABEL_METRICS)), name
        assert not (set(task.metrics) & set(GENERATIVE)) or task.causal_lm or task.needs_reference or task.rewarded, name


def test_every_format_has_its_code_rows():
    from runner.data.load import CONVERTERS
    from runner.evaluate.generation import PROMPT_AND_ANSWER

    formats = {name: fmt for task in TASKS.values() for name, fmt in task.formats.items()}
    assert set(CONVERTERS) == {name for name, fmt in formats.items() if fmt.becomes}
    generative = {fmt.becomes or name for name, fmt in formats.items() if fmt.generative}
    assert generative == set(PROMPT_AND_ANSWER)


def test_every_adapter_method_has_its_peft_config_and_the_flags_agree():
    import inspect

    from runner.train import adapters

    source = inspect.getsource(adapters.peft_config)
    for name, method in METHODS.items():
        assert (f'"{name}":' in source) == method.adapter, name
        assert not (method.trains_base and method.adapter), name
        assert not (method.soft_prompt and (method.packable or method.mergeable)), name
