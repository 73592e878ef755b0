"""Online RL on the tiny model, real TRL trainer steps: GRPO and RLOO raise the mean of a declared reward, a code
reward runs only as opted into and is recorded by hash, and a reward run's model scores the policy (the chain's
last link)."""
from __future__ import annotations

import hashlib
import json

import pytest

from conftest import ROOT, TINY_MODEL, base_recipe, write_json
from runner.commands.run import run
from runner.plan.build import build_plan
from runner.recipe.load import load_recipe

PROMPTS = str(ROOT / "recipes" / "assets" / "reverse" / "train.jsonl")


def rl_plan(tmp_path, rewards: list, task: str = "grpo", steps: int = 24, **training):
    recipe = base_recipe(tmp_path, task=task, data={"train": {"path": PROMPTS, "limit": 64},
                                                     "columns": {"answer": "completion"}})
    recipe["rewards"] = rewards
    recipe["training"] = {"max_steps": steps, "per_device_train_batch_size": 16, "num_generations": 4,
                          "max_completion_length": 8, "learning_rate": 5e-3, "logging_steps": 4, "save_strategy": "no",
                          "seed": 0, "beta": 0.0, **training}
    return build_plan(load_recipe(write_json(tmp_path / "recipe.json", recipe)))


def logged(manifest: dict, key: str) -> list[float]:
    return [entry[key] for entry in manifest["history"] if key in entry]


@pytest.mark.parametrize("task", ["grpo", "rloo"])
def test_online_rl_raises_the_mean_reward(tmp_path, task):
    """A length penalty (-(characters beyond 2) / 2): the random policy writes ~8 tokens (reward about -2.5); the
    trainer teaches it to stop early. Measured: GRPO -2.6 -> -0.07 in 24 steps of 16 completions."""
    manifest = run(rl_plan(tmp_path, [{"type": "length", "max_chars": 2}], task=task), argv=["test"])
    rewards = logged(manifest, "rewards/length/mean")
    assert len(rewards) == 6 and rewards[-1] > rewards[0] + 1.0, rewards
    lengths = logged(manifest, "completions/mean_length")
    assert lengths[-1] < lengths[0]


def test_a_code_reward_runs_as_opted_into_and_its_file_is_recorded(tmp_path):
    code = tmp_path / "rewards_code.py"
    code.write_text("def starts_with_space(prompts, completions, answer, **kwargs):\n"
                    "    assert len(answer) == len(completions)  # the row's columns arrive by name\n"
                    "    return [float(c.startswith(' ')) for c in completions]\n")
    manifest = run(rl_plan(tmp_path, [{"type": "python", "file": str(code), "function": "starts_with_space",
                                       "allow_code": True, "name": "space"}], steps=4),
                   argv=["test"])
    assert len(logged(manifest, "rewards/space/mean")) == 1
    saved = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert saved["rewards"][0]["sha256"] == hashlib.sha256(code.read_bytes()).hexdigest()


def test_a_reward_runs_model_scores_the_policy(tmp_path):
    """The chain's last link: a reward run (full fine-tuning, a few steps on the capitals-vs-lowercase pairs) names
    its run directory as a GRPO reward; its score is logged per step."""
    reward_run = tmp_path / "reward"
    reward = base_recipe(tmp_path, task="reward", data={
        "format": "preference", "train": {"path": str(ROOT / "recipes" / "assets" / "reverse_preference" /
                                                  "train.jsonl"), "limit": 64}},
        output={"dir": str(reward_run)})
    reward["training"] = {"max_steps": 4, "per_device_train_batch_size": 16, "max_length": 32, "save_strategy": "no",
                          "learning_rate": 1e-3}
    run(build_plan(load_recipe(write_json(tmp_path / "reward.json", reward))), argv=["test"])
    policy = tmp_path / "policy"
    policy.mkdir()
    manifest = run(rl_plan(policy, [{"type": "model", "path": str(reward_run), "name": "preference"},
                                    {"type": "exact_match", "weight": 2.0}], steps=2, logging_steps=1),
                   argv=["test"])
    assert len(logged(manifest, "rewards/preference/mean")) == 2
    assert manifest["trainer_config"]["reward_weights"] == [1.0, 2.0]
    assert str(TINY_MODEL) in json.loads((policy / "run" / "plan.json").read_text())["model"]["name_or_path"]


def test_a_reward_model_that_cannot_load_is_named_at_its_path(tmp_path):
    from runner.errors import RecipeError

    with pytest.raises(RecipeError) as info:
        run(rl_plan(tmp_path, [{"type": "model", "path": "no-such-org/no-such-reward-model"}], steps=1),
            argv=["test"])
    (problem,) = info.value.problems
    assert problem.path == "/rewards/0/path"
    assert problem.message.startswith("cannot load 'no-such-org/no-such-reward-model'")
    assert not (tmp_path / "run").exists()  # nothing written before the model and rewards loaded


def test_a_finished_sft_runs_directory_is_the_policy_a_grpo_recipe_names(tmp_path):
    """Chaining runs: a full fine-tuning run's output directory is a model directory (config, weights, tokenizer
    and its chat template), so a GRPO recipe names it as model.name_or_path."""
    sft = base_recipe(tmp_path, data={"format": "prompt_completion", "train": {"path": PROMPTS, "limit": 32}},
                      output={"dir": str(tmp_path / "sft")})
    run(build_plan(load_recipe(write_json(tmp_path / "sft.json", sft))), argv=["test"])
    policy = tmp_path / "policy"
    policy.mkdir()
    recipe = base_recipe(policy, task="grpo", model={"name_or_path": str(tmp_path / "sft")},
                         data={"train": {"path": PROMPTS, "limit": 16}, "columns": {"answer": "completion"}})
    recipe["model"].pop("init")
    recipe["rewards"] = [{"type": "exact_match"}]
    recipe["training"] = {"max_steps": 1, "per_device_train_batch_size": 4, "num_generations": 4,
                          "max_completion_length": 8, "save_strategy": "no", "logging_steps": 1}
    manifest = run(build_plan(load_recipe(write_json(policy / "grpo.json", recipe))), argv=["test"])
    assert manifest["status"] == "finished" and [h for h in manifest["history"] if "rewards/exact_match/mean" in h]


@pytest.mark.parametrize("earlier_run", [False, True], ids=["new directory", "over an earlier run"])
def test_log_completions_writes_its_tables_from_the_baseline_evaluation_on(tmp_path, earlier_run):
    """TRL makes completions/ when the trainer is built, before the runner starts the run directory: that empty
    folder is the trainer's, not a user's file (it used to stop every such run before its first step). The baseline
    evaluation logs its completions before training begins, into the folder the runner makes again once an earlier
    run has been moved aside (it used to fail there)."""
    rl_plan(tmp_path, [{"type": "length", "max_chars": 2}], steps=2, logging_steps=1)  # writes recipe.json
    recipe = json.loads((tmp_path / "recipe.json").read_text())
    recipe["data"]["eval"] = {"path": PROMPTS, "limit": 16}
    recipe["evaluation"] = {"baseline": True, "metrics": ["rewards"]}
    recipe["training"].update(log_completions=True, per_device_eval_batch_size=16)
    recipe["output"]["if_exists"] = "overwrite"
    runs = 2 if earlier_run else 1
    for _ in range(runs):
        manifest = run(build_plan(load_recipe(write_json(tmp_path / "recipe.json", recipe))), argv=["test"])
    assert manifest["status"] == "finished" and "rewards/length/mean" in manifest["metrics"]["before"]
    tables = sorted(p.name for p in (tmp_path / "run" / "completions").iterdir())
    assert tables == ["completions_00000.parquet", "completions_00001.parquet", "completions_00002.parquet"], tables


def test_a_reward_model_scores_completions_tokenized_as_reward_trainer_trained_it(tmp_path):
    """TRL's RewardTrainer appends EOS to each plain-text response and the score is read there; GRPOTrainer's own
    scoring of a model reward would read it at the last character. The runner's scorer gives the ids the
    RewardTrainer made of the same pair, so a reward model scores the policy where it was trained to."""
    from datasets import Dataset
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    from runner.train.rewards import scored_ids

    tokenizer = AutoTokenizer.from_pretrained(TINY_MODEL)
    model = AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(TINY_MODEL, num_labels=1))
    plain = {"prompt": "reverse abc =", "chosen": " cba", "rejected": " abc"}
    chat = {"prompt": [{"role": "user", "content": "reverse abc"}],
            "chosen": [{"role": "assistant", "content": "cba"}], "rejected": [{"role": "assistant", "content": "abc"}]}
    for name, pair in (("plain", plain), ("chat", chat)):
        args = RewardConfig(output_dir=str(tmp_path / name), report_to="none", use_cpu=True)
        row = RewardTrainer(model=model, args=args, train_dataset=Dataset.from_list([pair]),
                            processing_class=tokenizer).train_dataset[0]
        for side in ("chosen", "rejected"):
            assert scored_ids(tokenizer, pair["prompt"], pair[side], tokenizer.eos_token) == row[f"{side}_ids"], name
    assert scored_ids(tokenizer, plain["prompt"], plain["chosen"], tokenizer.eos_token)[-1] == tokenizer.eos_token_id
