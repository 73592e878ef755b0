"""Every run kind trains for real on the tiny Llama: DPO, classification, instruction tuning, pre-training.

Each test asserts what matters for its kind: the weights that should change did (and only those),
the label map is saved, DPO's rewards are logged, the metrics and report are written.
"""
from __future__ import annotations

import json
import random

import pytest
import torch
from safetensors.torch import load_file

from assets import reverse_rows
from runner.data import labels
from runner.train import models
from runner.errors import RecipeError
from runner.plan.build import build_plan
from runner.recipe.load import load_recipe
from runner.commands.run import prepare, run
from conftest import ROOT, base_recipe, write_jsonl

ROWS = reverse_rows(48, seed=5)


def labelled_rows(count: int, seed: int) -> list[dict]:
    """Label a word by its first letter: an easy, learnable rule."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        word = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 7)))
        rows.append({"sentence": word, "label": "early" if word[0] < "n" else "late"})
    return rows


def preference_rows(implicit: bool = False) -> list[dict]:
    rows = []
    for r in ROWS:
        chosen, rejected = r["completion"], " " + r["completion"][1:][::-1]  # the right reversal vs the input
        if implicit:
            rows.append({"chosen": r["prompt"] + chosen, "rejected": r["prompt"] + rejected})
        else:
            rows.append({"prompt": r["prompt"], "chosen": chosen, "rejected": rejected})
    return rows


def plan_for(tmp_path, recipe_file, rows, **sections):
    write_jsonl(tmp_path / "train.jsonl", rows)
    return build_plan(load_recipe(recipe_file(base_recipe(tmp_path, **sections))))


def initial(plan, config_updates=None):
    return models.load_model(plan["model"], plan["recipe"]["training"]["seed"], config_updates).state_dict()


@pytest.mark.parametrize("implicit", [False, True])
def test_dpo_full_fine_tuning_logs_rewards(tmp_path, recipe_file, implicit):
    plan = plan_for(tmp_path, recipe_file, preference_rows(implicit), task="dpo",
                    data={"train": {"path": "train.jsonl"}, "eval_fraction": 0.25},
                    training={"max_steps": 4, "learning_rate": 1e-3, "per_device_train_batch_size": 8,
                              "logging_steps": 1, "max_length": 64})
    manifest = run(plan, argv=["test"])
    after = manifest["metrics"]["after"]
    assert {"loss", "rewards/accuracies", "rewards/margins"} <= set(after)
    assert any("rewards/margins" in h for h in manifest["history"]), "TRL logs rewards while training"
    saved = load_file(tmp_path / "run" / "model.safetensors")
    before = initial(plan)
    assert all(not torch.equal(v, before[k]) for k, v in saved.items())
    assert (tmp_path / "run" / "report.md").read_text().count("rewards/margins") == 1


def test_dpo_with_lora_uses_the_adapter_free_base_as_reference(tmp_path, recipe_file):
    """No second copy: TRL disables the adapter for the reference pass. Before training the policy is the
    reference (LoRA B starts at zero): margins are exactly 0; after, not; `eval` reloads the start model as the
    reference and measures the same. One training for all of it."""
    from runner.commands.inference import evaluate_run
    from runner.commands.run import train

    plan = plan_for(tmp_path, recipe_file, preference_rows(), task="dpo",
                    data={"train": {"path": "train.jsonl"}, "eval": {"path": "train.jsonl"}},
                    peft={"method": "lora", "r": 4},
                    evaluation={"metrics": ["loss", "rewards", "exact_match"], "max_examples": 4, "baseline": True,
                                "generation": {"max_new_tokens": 4}},
                    training={"max_steps": 4, "learning_rate": 5e-3, "per_device_train_batch_size": 8})
    prepared = prepare(plan)
    assert prepared.trainer.ref_model is None and plan["trainer"]["reference_model"] == "adapter-disabled"
    manifest = train(prepared.plan, prepared, ["test"])
    before, after = manifest["metrics"]["before"], manifest["metrics"]["after"]
    assert before["rewards/margins"] == 0.0 and before["rewards/chosen"] == 0.0
    assert after["rewards/margins"] != 0.0
    assert 0.0 <= after["exact_match"] <= 1.0  # generated answers vs chosen responses
    assert (tmp_path / "run" / "adapter_model.safetensors").is_file()
    again = evaluate_run(plan, tmp_path / "run")["after"]
    assert again["rewards/margins"] == pytest.approx(after["rewards/margins"], rel=1e-3, abs=1e-5)


CLASSIFY = {"data": {"format": "labelled", "train": {"path": "train.jsonl"}, "eval": {"path": "eval.jsonl"},
                     "columns": {"text": "sentence"}},
            "task": "classification",
            "training": {"max_steps": 30, "learning_rate": 3e-3, "per_device_train_batch_size": 16,
                         "max_length": 16, "logging_steps": 5}}


def classify(tmp_path, recipe_file, **sections):
    write_jsonl(tmp_path / "eval.jsonl", labelled_rows(40, seed=8))
    recipe = {**CLASSIFY, **sections}
    if "training" in sections:
        recipe["training"] = {**CLASSIFY["training"], **sections["training"]}
    return plan_for(tmp_path, recipe_file, labelled_rows(160, seed=7), **recipe)


def test_classification_learns_and_saves_the_label_map(tmp_path, recipe_file):
    from transformers import AutoModelForSequenceClassification

    plan = classify(tmp_path, recipe_file, evaluation={"baseline": True})
    manifest = run(plan, argv=["test"])
    before, after = manifest["metrics"]["before"], manifest["metrics"]["after"]
    assert after["accuracy"] > 0.8 and after["accuracy"] > before["accuracy"], (before, after)
    assert after["confusion_matrix"]["labels"] == ["early", "late"]
    assert sum(map(sum, after["confusion_matrix"]["matrix"])) == 40
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run")
    assert model.config.id2label == {0: "early", 1: "late"} and model.config.label2id == {"early": 0, "late": 1}
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["after"]["f1_macro"] == after["f1_macro"]


def test_classification_head_only_leaves_the_body_untouched(tmp_path, recipe_file):
    plan = classify(tmp_path, recipe_file, peft={"method": "partial", "trainable": ["head"]})
    manifest = run(plan, argv=["test"])
    saved = load_file(tmp_path / "run" / "model.safetensors")
    updates = {"num_labels": 2, "id2label": {0: "early", 1: "late"}, "label2id": {"early": 0, "late": 1}}
    before = initial(plan, updates)
    changed = {k for k, v in saved.items() if not torch.equal(v, before[k])}
    assert changed == {"score.weight"}
    assert manifest["parameters"]["trainable"] == 2 * 128  # num_labels x hidden_size


def test_classification_last_layer_only(tmp_path, recipe_file):
    plan = classify(tmp_path, recipe_file, peft={"method": "partial", "trainable": ["head", r"model\.layers\.2\."]})
    run(plan, argv=["test"])
    saved = load_file(tmp_path / "run" / "model.safetensors")
    updates = {"num_labels": 2, "id2label": {0: "early", 1: "late"}, "label2id": {"early": 0, "late": 1}}
    before = initial(plan, updates)
    changed = {k for k, v in saved.items() if not torch.equal(v, before[k])}
    assert "score.weight" in changed and all(k.startswith(("model.layers.2.", "score")) for k in changed)
    assert "model.embed_tokens.weight" not in changed


def test_classification_with_lora_keeps_the_head_trainable(tmp_path, recipe_file):
    plan = classify(tmp_path, recipe_file, peft={"method": "lora", "r": 4})
    manifest = run(plan, argv=["test"])
    adapter = load_file(tmp_path / "run" / "adapter_model.safetensors")
    assert any("score" in k for k in adapter), "the classification head is saved with the adapter"
    assert any("lora_A" in k for k in adapter)
    assert manifest["metrics"]["after"]["accuracy"] > 0.8  # 0.95 here; chance is 0.5


def test_partial_pattern_that_matches_nothing(tmp_path, recipe_file):
    plan = classify(tmp_path, recipe_file, peft={"method": "partial", "trainable": ["classifier"]})
    with pytest.raises(RecipeError) as info:
        prepare(plan)
    assert info.value.problems[0].path == "/peft/trainable/0"
    assert "matches no parameter" in info.value.problems[0].message


def test_eval_label_outside_the_label_set_names_rows(tmp_path, recipe_file):
    plan = classify(tmp_path, recipe_file)
    rows = labelled_rows(40, seed=8)
    rows[2]["label"], rows[9]["label"] = "middle", "unknown"
    write_jsonl(tmp_path / "eval.jsonl", rows)
    with pytest.raises(RecipeError) as info:
        prepare(plan)
    (problem,) = info.value.problems
    assert problem.path == "/data/eval"
    assert problem.message == "2 rows have a label outside the label set ['early', 'late']: rows 3, 10 (column label)"


def test_balanced_class_weights():
    assert labels.class_weights("balanced", [0, 0, 0, 1], 2) == [4 / 6, 4 / 2]
    assert labels.class_weights([1.0, 3.0], [0, 1], 2) == [1.0, 3.0]
    with pytest.raises(RecipeError):
        labels.class_weights([1.0, 2.0, 3.0], [0, 1], 2)


def test_class_weights_reach_the_loss(tmp_path, recipe_file):
    plan = classify(tmp_path, recipe_file, training={"class_weights": [1.0, 5.0], "max_steps": 2})
    trainer = prepare(plan).trainer
    assert trainer.compute_loss_func is not None
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    labels = torch.tensor([0, 1])
    expected = torch.nn.functional.cross_entropy(logits, labels, weight=torch.tensor([1.0, 5.0]))
    assert torch.isclose(trainer.compute_loss_func({"logits": logits}, labels), expected)


def test_alpaca_records_train_on_the_response_only(tmp_path, recipe_file):
    rows = [{"instruction": "reverse", "input": "lvpy", "output": "ypvl"},
            {"instruction": "say hi", "output": "hi"}]
    plan = plan_for(tmp_path, recipe_file, rows, data={"format": "alpaca", "train": {"path": "train.jsonl"}})
    trainer = prepare(plan).trainer
    labels = trainer.data_collator([trainer.train_dataset[0]])["labels"][0]
    assert trainer.processing_class.decode(labels[labels != -100]) == "ypvl<|end|>"
    first = trainer.processing_class.decode(trainer.train_dataset[0]["input_ids"])
    assert first == "<|user|>reverse\n\nlvpy<|end|><|assistant|>ypvl<|end|>"


def test_pretraining_from_scratch_with_packing_and_retention(tmp_path, recipe_file):
    text = [{"text": f"{r['prompt']}{r['completion']}"} for r in ROWS]
    write_jsonl(tmp_path / "general.jsonl", [{"text": "the quick brown fox jumps over the lazy dog"}] * 8)
    plan = plan_for(tmp_path, recipe_file, text, task="pretrain",
                    data={"train": {"path": "train.jsonl"}, "eval_fraction": 0.25},
                    training={"packing": True, "max_length": 64, "max_steps": 10, "learning_rate": 5e-3},
                    evaluation={"baseline": True, "retention": {"path": "general.jsonl"}})
    assert plan["trainer"]["config"]["packing"] is True
    manifest = run(plan, argv=["test"])
    before, after = manifest["metrics"]["before"], manifest["metrics"]["after"]
    assert after["perplexity"] < before["perplexity"]
    retention = manifest["metrics"]["retention"]
    assert set(retention) == {"before", "after"} and retention["after"]["loss"] != retention["before"]["loss"]
    assert "retention" in (tmp_path / "run" / "report.md").read_text().lower()


def test_separate_evaluation_data_and_generation_metrics(tmp_path, recipe_file):
    write_jsonl(tmp_path / "held_out.jsonl", reverse_rows(6, seed=11))
    plan = plan_for(tmp_path, recipe_file, ROWS, data={"format": "prompt_completion", "train": {"path": "train.jsonl"}},
                    evaluation={"data": {"path": "held_out.jsonl"}, "metrics": ["exact_match", "rouge", "bleu"],
                                "generation": {"max_new_tokens": 6}})
    manifest = run(plan, argv=["test"])
    after = manifest["metrics"]["after"]
    assert set(after) == {"exact_match", "rouge1", "rouge2", "rougeL", "bleu"}
    assert manifest["examples"]["evaluation"] == 6 and "eval" not in manifest["examples"]


def test_eval_and_predict_a_finished_run(tmp_path, recipe_file):
    """`eval` re-measures a saved run without training; `predict` shows what it answers."""
    from runner.commands.inference import evaluate_run, predict

    plan = plan_for(tmp_path, recipe_file, ROWS, data={"format": "prompt_completion", "train": {"path": "train.jsonl"},
                                                        "eval": {"path": "train.jsonl"}},
                    training={"max_steps": 8, "learning_rate": 5e-3, "per_device_train_batch_size": 16},
                    evaluation={"metrics": ["loss", "exact_match"], "max_examples": 4,
                                "generation": {"max_new_tokens": 4}})
    manifest = run(plan, argv=["test"])
    results = evaluate_run(plan, tmp_path / "run")
    assert results["after"]["loss"] == pytest.approx(manifest["metrics"]["after"]["loss"], rel=1e-4)
    assert len(list((tmp_path / "run").glob("eval-*.json"))) == 1
    outputs = predict(tmp_path / "run", ["reverse abc =", "reverse xyz ="], max_new_tokens=3)
    assert [o["input"] for o in outputs] == ["reverse abc =", "reverse xyz ="]
    assert all(isinstance(o["output"], str) for o in outputs)


def test_predict_labels_with_a_lora_classifier(tmp_path, recipe_file):
    from runner.commands.inference import predict

    plan = classify(tmp_path, recipe_file, peft={"method": "lora", "r": 4})
    run(plan, argv=["test"])
    outputs = predict(tmp_path / "run", ["apple", "zebra"])
    assert [set(o["scores"]) for o in outputs] == [{"early", "late"}] * 2
    assert all(o["label"] in ("early", "late") and sum(o["scores"].values()) == pytest.approx(1, abs=1e-4)
               for o in outputs)


SHARED_SST2 = ROOT.parent / "shared" / "data" / "sst2"


@pytest.mark.skipif(not (SHARED_SST2 / "train.tsv").is_file(), reason="../shared/data/sst2 is not present")
def test_classification_on_real_sst2_sentences(tmp_path, recipe_file):
    """Real public data (SST-2, TSV with integer labels) through the same path, names from data.labels."""
    recipe = base_recipe(tmp_path, task="classification",
                         data={"format": "labelled", "train": {"path": str(SHARED_SST2 / "train.tsv"), "limit": 256},
                               "eval": {"path": str(SHARED_SST2 / "dev.tsv"), "limit": 64},
                               "columns": {"text": "sentence"}, "labels": ["negative", "positive"]},
                         training={"max_steps": 4, "per_device_train_batch_size": 16, "max_length": 64,
                                   "learning_rate": 1e-3})
    manifest = run(build_plan(load_recipe(recipe_file(recipe))), argv=["test"])
    after = manifest["metrics"]["after"]
    assert after["confusion_matrix"]["labels"] == ["negative", "positive"]
    assert sum(map(sum, after["confusion_matrix"]["matrix"])) == 64
    assert manifest["config_updates"]["id2label"] == {0: "negative", 1: "positive"}


@pytest.mark.parametrize("fmt, rows, expected", [
    ("messages",
     [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
      {"messages": [{"role": "user", "content": "hi"}]},
      {"messages": [{"role": "human", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
      {"messages": [{"role": "user", "content": "a"}]}],
     ["2 rows have no assistant turn (nothing to learn): rows 2, 4 (column messages)",
      "1 rows have a turn with a role outside ['system', 'user', 'assistant', 'tool']: rows 3 (column messages)"]),
    ("preference",
     [{"prompt": "p", "chosen": "a", "rejected": "b"}, {"prompt": "p", "chosen": "", "rejected": "b"},
      {"prompt": "p", "chosen": "a", "rejected": None}],
     ["1 rows are empty: rows 2 (column chosen)", "1 rows are not text: rows 3 (column rejected)"]),
    ("alpaca",
     [{"instruction": "do", "input": "", "output": "done"}, {"instruction": "do", "input": None, "output": " "}],
     ["1 rows are empty: rows 2 (column output)"]),
])
def test_bad_rows_are_reported_with_rows_and_counts_before_loading(tmp_path, recipe_file, fmt, rows, expected):
    task = "dpo" if fmt == "preference" else "sft"
    plan = plan_for(tmp_path, recipe_file, rows, task=task, data={"format": fmt, "train": {"path": "train.jsonl"}})
    with pytest.raises(RecipeError) as info:
        prepare(plan)
    suffix = f" in {tmp_path / 'train.jsonl'}"
    assert [(p.path, p.message) for p in info.value.problems] == [("/data/train", e + suffix) for e in expected]


def test_conversational_preference_pairs_and_a_named_chat_template(tmp_path, recipe_file):
    """DPO on conversational pairs (implicit prompt), rendered with a template file the recipe names."""
    template = tmp_path / "chat.jinja"
    template.write_text("{%- for m in messages -%}[{{ m['role'] }}]{{ m['content'] }}<|end|>{%- endfor -%}"
                        "{%- if add_generation_prompt -%}[assistant]{%- endif -%}")
    rows = [{"chosen": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["completion"]}],
             "rejected": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": "no"}]}
            for r in ROWS]
    plan = plan_for(tmp_path, recipe_file, rows, task="dpo", model={"chat_template": str(template)},
                    data={"train": {"path": "train.jsonl"}},
                    training={"max_steps": 2, "per_device_train_batch_size": 4, "max_length": 64})
    trainer = prepare(plan).trainer
    first = trainer.processing_class.decode(trainer.train_dataset[0]["prompt_ids"])
    assert first.startswith("[user]reverse") and first.endswith("[assistant]")
    run(plan, argv=["test"])
    assert (tmp_path / "run" / "run.json").is_file()


def test_a_failure_while_measuring_keeps_the_trained_model(tmp_path, recipe_file, monkeypatch):
    from runner.evaluate import measure as evaluation

    plan = plan_for(tmp_path, recipe_file, ROWS, data={"format": "prompt_completion", "train": {"path": "train.jsonl"},
                                                        "eval": {"path": "train.jsonl"}})

    def broken(*args, **kwargs):
        raise RuntimeError("metric exploded")

    monkeypatch.setattr(evaluation, "measure", broken)
    with pytest.raises(RuntimeError):
        run(plan, argv=["test"])
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["status"] == "failed" and "metric exploded" in record["error"]
    assert record["metrics"]["train"]["train_loss"] > 0, "training finished and was recorded"
    assert (tmp_path / "run" / "model.safetensors").is_file(), "the trained weights were saved before measuring"
    assert "failed" in (tmp_path / "run" / "report.md").read_text()


def test_eval_refuses_a_recipe_that_does_not_match_the_run(tmp_path, recipe_file):
    from runner.commands.inference import evaluate_run

    plan = plan_for(tmp_path, recipe_file, ROWS, data={"format": "prompt_completion", "train": {"path": "train.jsonl"},
                                                        "eval": {"path": "train.jsonl"}})
    run(plan, argv=["test"])
    other = build_plan(load_recipe(recipe_file(base_recipe(tmp_path, data={"format": "prompt_completion",
                                                                          "eval": {"path": "train.jsonl"}},
                                                           peft={"method": "lora"}), "other.json")))
    with pytest.raises(RecipeError) as info:
        evaluate_run(other, tmp_path / "run")
    assert [p.path for p in info.value.problems] == ["/peft/method"]


def test_eval_of_a_weighted_classifier_reproduces_its_loss(tmp_path, recipe_file):
    from runner.commands.inference import evaluate_run

    plan = classify(tmp_path, recipe_file, training={"class_weights": "balanced", "max_steps": 6})
    manifest = run(plan, argv=["test"])
    assert json.loads((tmp_path / "run" / "plan.json").read_text())["trainer"]["runner_settings"]["class_weights"] \
        == pytest.approx(labels.class_weights("balanced", [0 if r["label"] == "early" else 1
                                                                   for r in labelled_rows(160, seed=7)], 2))
    again = evaluate_run(plan, tmp_path / "run")["after"]
    assert again["loss"] == pytest.approx(manifest["metrics"]["after"]["loss"], rel=1e-4)
    assert again["accuracy"] == manifest["metrics"]["after"]["accuracy"]


def test_classification_from_a_checkpoint_with_another_head(tmp_path, recipe_file):
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from conftest import TINY_MODEL

    config = AutoConfig.from_pretrained(TINY_MODEL, num_labels=3)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(tmp_path / "three-way")
    (tmp_path / "three-way" / "tokenizer.json").write_bytes((TINY_MODEL / "tokenizer.json").read_bytes())
    (tmp_path / "three-way" / "tokenizer_config.json").write_bytes((TINY_MODEL / "tokenizer_config.json").read_bytes())
    plan = classify(tmp_path, recipe_file, model={"name_or_path": str(tmp_path / "three-way"), "init": "pretrained"},
                    training={"max_steps": 2})
    manifest = run(plan, argv=["test"])
    assert manifest["config_updates"]["num_labels"] == 2 and "accuracy" in manifest["metrics"]["after"]


def test_lora_on_the_classifier_head_is_named_score(tmp_path, recipe_file):
    (tmp_path / "eval.jsonl").write_text("")
    with pytest.raises(RecipeError) as info:
        classify(tmp_path, recipe_file, peft={"method": "lora", "target_modules": ["lm_head"]})
    (problem,) = info.value.problems
    assert problem.path == "/peft/target_modules/0" and "is not a linear module" in problem.message


def test_label_problems_name_file_rows_even_with_eval_fraction(tmp_path, recipe_file):
    rows = labelled_rows(40, seed=3)
    rows[6]["label"] = 7
    recipe = {**CLASSIFY, "data": {**CLASSIFY["data"], "eval": None, "eval_fraction": 0.25}}
    plan = plan_for(tmp_path, recipe_file, rows, **recipe)
    with pytest.raises(RecipeError) as info:
        prepare(plan)
    assert info.value.problems[0].path == "/data/train"
    assert info.value.problems[0].message == "labels must be all names (strings) or all integers >= 0"


def test_precomputed_reference_needs_the_eval_set_up_front(tmp_path, recipe_file):
    (tmp_path / "held.jsonl").write_text("")
    with pytest.raises(RecipeError) as info:
        plan_for(tmp_path, recipe_file, preference_rows(), task="dpo", data={"train": {"path": "train.jsonl"}},
                 training={"precompute_ref_log_probs": True}, evaluation={"data": {"path": "held.jsonl"}})
    assert [p.path for p in info.value.problems] == ["/evaluation/data"]


def test_conversational_prompt_completion_is_evaluated_and_predicted_through_the_template(
        tmp_path, recipe_file, monkeypatch):
    from runner.commands.inference import predict

    rows = [{"prompt": [{"role": "user", "content": r["prompt"]}],
             "completion": [{"role": "assistant", "content": r["completion"]}]} for r in ROWS[:16]]
    plan = plan_for(tmp_path, recipe_file, rows, data={"format": "prompt_completion", "train": {"path": "train.jsonl"},
                                                        "eval": {"path": "train.jsonl"}},
                    evaluation={"metrics": ["exact_match", "rouge"], "max_examples": 4,
                                "generation": {"max_new_tokens": 3}})
    manifest = run(plan, argv=["test"])
    assert manifest["data_shape"] == {"conversational": True}
    assert 0.0 <= manifest["metrics"]["after"]["rouge1"] <= 1.0
    seen = []
    monkeypatch.setattr("runner.commands.inference.generate", lambda model, tok, prompts, settings: seen.extend(prompts) or ["x"])
    predict(tmp_path / "run", ["reverse abc ="])
    tokenizer = __import__("transformers").AutoTokenizer.from_pretrained(tmp_path / "run")
    assert tokenizer.decode(seen[0]) == "<|user|>reverse abc =<|end|><|assistant|>"
