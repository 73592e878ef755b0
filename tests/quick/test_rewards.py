"""Online RL's declared rewards: the built-in verifiable rewards score completions as they say, and every mistake in
the rewards section is reported before anything loads, at its recipe path. No torch: the reward functions are plain
Python, and the plan only reads files."""
from __future__ import annotations

import json

import pytest

from conftest import TINY_MODEL, base_recipe, write_json, write_jsonl
from runner.errors import RecipeError
from runner.plan.build import build_plan
from runner.recipe.load import load_recipe
from runner.train import rewards as built_in

PROMPTS = ["q1", "q2", "q3", "q4"]


def scores(reward: dict, completions: list, answers: list | None = None) -> list:
    reward = {"name": reward["type"], "column": "answer" if reward["type"] in ("exact_match", "contains", "numeric")
              else None, "tolerance": 1e-6, **reward}
    function = built_in.BUILT_IN[reward["type"]](reward)
    return function(prompts=PROMPTS[:len(completions)], completions=completions,
                    **({"answer": answers} if answers is not None else {}))


def test_exact_match_contains_and_numeric_compare_with_the_rows_reference():
    assert scores({"type": "exact_match"}, [" cba", "abc", "cba\n", "x"], ["cba", "cba", " cba", None]) == \
        [1.0, 0.0, 1.0, None]  # no reference: no score (TRL leaves it out of the mean)
    assert scores({"type": "contains"}, ["so: 42.", "41"], ["42", "42"]) == [1.0, 0.0]
    assert scores({"type": "numeric"}, ["it is 1,234.0", "3.5 or 4", "none", "-2"], ["1234", "4", "1", "-2.0"]) == \
        [1.0, 1.0, 0.0, 1.0]
    # conversational completions are scored on their turns' text
    assert scores({"type": "exact_match"}, [[{"role": "assistant", "content": "cba"}]], ["cba"]) == [1.0]


def test_regex_format_and_length_rewards():
    assert scores({"type": "regex", "pattern": r"answer: (\w+)", "column": "answer"},
                  ["so answer: cat", "answer: dog", "cat"], ["cat", "cat", "cat"]) == [1.0, 0.0, 0.0]
    assert scores({"type": "regex", "pattern": r"\d"}, ["a1", "ab"]) == [1.0, 0.0]
    assert scores({"type": "format", "pattern": r"<think>.*</think>\s*<answer>.*</answer>"},
                  ["<think>a\nb</think> <answer>c</answer>", "<answer>c</answer>"]) == [1.0, 0.0]
    assert scores({"type": "length", "max_chars": 4}, ["abcd", "abcdef", ""]) == [0.0, -0.5, 0.0]


def rl_recipe(tmp_path, rewards=None, training=None, **sections) -> dict:
    write_jsonl(tmp_path / "prompts.jsonl", [{"question": f"reverse ab{i} =", "solution": f" {i}ba"} for i in range(8)])
    recipe = base_recipe(tmp_path, task="grpo", data={"train": {"path": "prompts.jsonl"},
                                                      "columns": {"prompt": "question", "answer": "solution"}},
                         **sections)
    recipe["training"] = training or {"max_steps": 2, "per_device_train_batch_size": 4, "num_generations": 4,
                                      "max_completion_length": 8, "save_strategy": "no"}
    if rewards is not None:
        recipe["rewards"] = rewards
    return recipe


def problems_of(tmp_path, recipe) -> list[tuple[str, str]]:
    with pytest.raises(RecipeError) as info:
        build_plan(load_recipe(write_json(tmp_path / "recipe.json", recipe)))
    return sorted((p.path, p.message) for p in info.value.problems)


def test_a_grpo_plan_names_its_rewards_weights_and_generation_batch(tmp_path):
    (tmp_path / "my_reward.py").write_text("def brevity(prompts, completions, **kw):\n    return [0.0] * len(completions)\n")
    recipe = rl_recipe(tmp_path, [{"type": "exact_match"}, {"type": "exact_match", "weight": 0.5},
                                  {"type": "python", "file": "my_reward.py", "function": "brevity", "allow_code": True}],
                       training={"max_steps": 2, "per_device_train_batch_size": 4, "num_generations": 4,
                                 "gradient_accumulation_steps": 2, "save_strategy": "no"})
    plan = build_plan(load_recipe(write_json(tmp_path / "recipe.json", recipe)))
    assert [r["name"] for r in plan["rewards"]] == ["exact_match", "exact_match_2", "python"]
    assert plan["trainer"]["config"]["reward_weights"] == [1.0, 0.5, 1.0]
    import hashlib
    assert plan["rewards"][2]["sha256"] == hashlib.sha256((tmp_path / "my_reward.py").read_bytes()).hexdigest()
    assert plan["rewards"][2]["file"] == str(tmp_path / "my_reward.py")  # relative to the recipe
    assert plan["batch"]["generation"] == {
        "completions_per_generation": 8, "prompts_per_generation": 2, "num_generations": 4, "steps_per_generation": 2,
        "note": "2 prompts x 4 completions each = 8 completions per generation, trained on over 2 micro-step(s) of 4"}
    assert plan["data"]["train"][0]["columns"] == {"prompt": "question", "answer": "solution"}



def test_a_grpo_plans_steps_per_epoch_count_generations_not_rows(tmp_path):
    """TRL's sampler draws prompts_per_generation whole prompts per generation and repeats each num_generations
    times: 8 prompts, 4 completions each, 4 per device x 2 processes = 2 prompts per generation, 4 steps per epoch
    (one row per example would say 8 / 8 = 1). tests/tiny/test_online_rl_ranks.py checks it against the trainer."""
    from runner.plan.topology import Topology

    recipe = rl_recipe(tmp_path, [{"type": "exact_match"}],
                       training={"max_steps": -1, "num_train_epochs": 3, "per_device_train_batch_size": 4,
                                 "num_generations": 4, "save_strategy": "no"})
    plan = build_plan(load_recipe(write_json(tmp_path / "recipe.json", recipe)), Topology(2, 1, "ddp"))
    assert plan["batch"]["steps_per_epoch"] == 4 and plan["batch"]["total_steps"] == 12
    assert plan["batch"]["generation"]["note"] == ("2 prompts x 4 completions each = 8 completions per generation "
                                                   "(4 generated by each of 2 processes), trained on over 1 "
                                                   "micro-step(s) of 8")

def test_rewards_are_required_for_online_rl_and_refused_elsewhere(tmp_path):
    assert problems_of(tmp_path, rl_recipe(tmp_path)) == [("/rewards", "task 'grpo' needs rewards to train towards")]
    write_jsonl(tmp_path / "train.jsonl", [{"text": "a"}])
    recipe = base_recipe(tmp_path)
    recipe["rewards"] = [{"type": "exact_match"}]
    assert problems_of(tmp_path, recipe) == [("/rewards", "task 'sft' trains on no rewards")]


def test_reward_mistakes_are_reported_at_their_paths_all_at_once(tmp_path):
    (tmp_path / "code.py").write_text("def other():\n    pass\n")
    (tmp_path / "sft_run").mkdir()
    (tmp_path / "sft_run" / "plan.json").write_text(json.dumps({"task": "sft"}))
    found = problems_of(tmp_path, rl_recipe(tmp_path, [
        {"type": "exact_match", "column": "solution"},  # the source's column name, not the format's field
        {"type": "regex", "pattern": "(unclosed"},
        {"type": "python", "file": "code.py", "function": "score", "allow_code": True},
        {"type": "model", "path": str(tmp_path / "sft_run")},
        {"type": "length", "max_chars": 10, "name": "exact_match"},
    ]))
    assert found == [
        ("/rewards/0/column", "the rows have no field 'solution' (their fields: prompt, answer)"),
        ("/rewards/1/pattern", "not a regular expression: missing ), unterminated subpattern at position 0"),
        ("/rewards/2/function", f"{tmp_path / 'code.py'} defines no function 'score' at its top level"),
        ("/rewards/3/path", f"{tmp_path / 'sft_run'} is the run directory of a 'sft' run, not a reward model"),
        ("/rewards/4/name", "another reward is also named 'exact_match'"),
    ]


def test_code_rewards_need_the_opt_in_and_keys_of_another_type_are_refused(tmp_path):
    (tmp_path / "code.py").write_text("def score(prompts, completions, **kw):\n    return [1.0] * len(completions)\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(write_json(tmp_path / "recipe.json", rl_recipe(tmp_path, [
            {"type": "python", "file": "code.py", "function": "score"},
            {"type": "exact_match", "max_chars": 3}])))
    found = {(p.path, p.message, p.hint) for p in info.value.problems}
    assert ("/rewards/0/allow_code", "missing (required)", None) in {(p, m, None) for p, m, _ in found}
    assert any(p == "/rewards/1/max_chars" and "belongs to type ['length']" in (h or "") for p, m, h in found), found


def test_generation_batches_trl_would_refuse_are_refused_in_the_plan(tmp_path):
    found = problems_of(tmp_path, rl_recipe(tmp_path, [{"type": "exact_match"}],
                                            training={"max_steps": 2, "per_device_train_batch_size": 3,
                                                      "num_generations": 4, "save_strategy": "no"}))
    assert found == [("/training/num_generations", "3 completions per generation do not split into whole groups of 4")]
    found = problems_of(tmp_path, rl_recipe(tmp_path, [{"type": "exact_match"}],
                                            training={"max_steps": 2, "per_device_train_batch_size": 4,
                                                      "generation_batch_size": 6, "save_strategy": "no"}))
    assert found == [("/training/generation_batch_size", "6 is not a multiple of the global batch (4 per device x 1 "
                                                         "process(es) = 4)")]


def test_a_kl_reference_trl_would_reload_wrongly_is_refused(tmp_path):
    found = problems_of(tmp_path, rl_recipe(tmp_path, [{"type": "exact_match"}],
                                            training={"max_steps": 2, "per_device_train_batch_size": 4,
                                                      "num_generations": 4, "beta": 0.04, "save_strategy": "no"}))
    assert found == [("/training/beta", "beta > 0 keeps a reference model, which TRL reloads from model.name_or_path: "
                                        "for a randomly initialized model that is not the start model")]
    recipe = rl_recipe(tmp_path, [{"type": "exact_match"}], peft={"method": "lora", "target_modules": ["q_proj"]},
                       training={"max_steps": 2, "per_device_train_batch_size": 4, "num_generations": 4,
                                 "beta": 0.04, "save_strategy": "no"})
    assert build_plan(load_recipe(write_json(tmp_path / "recipe.json", recipe)))["task"] == "grpo"  # adapter off


def test_rloo_takes_its_own_defaults(tmp_path):
    recipe = rl_recipe(tmp_path, [{"type": "contains"}], peft={"method": "lora", "target_modules": ["q_proj"]})
    recipe["task"] = "rloo"
    recipe["training"] = {"max_steps": 2, "per_device_train_batch_size": 4, "save_strategy": "no"}
    plan = build_plan(load_recipe(write_json(tmp_path / "recipe.json", recipe)))
    config = plan["trainer"]["config"]
    assert config["num_generations"] == 2 and config["beta"] == 0.05 and "scale_rewards" not in config
    assert str(TINY_MODEL) == plan["model"]["name_or_path"]


def test_a_code_reward_changed_after_planning_does_not_run(tmp_path):
    code = tmp_path / "code.py"
    code.write_text("def score(prompts, completions, **kw):\n    return [1.0] * len(completions)\n")
    recipe = rl_recipe(tmp_path, [{"type": "python", "file": "code.py", "function": "score", "allow_code": True}])
    (reward,) = build_plan(load_recipe(write_json(tmp_path / "recipe.json", recipe)))["rewards"]
    assert built_in.python_function(reward)(prompts=["p"], completions=["c"]) == [1.0]
    code.write_text("def score(prompts, completions, **kw):\n    raise SystemExit('never run')\n")
    with pytest.raises(RecipeError) as info:
        built_in.python_function(reward)
    (problem,) = info.value.problems
    assert problem.path == "/rewards/0/file" and "changed after the plan recorded it" in problem.message
