"""Task `reward` without torch: its schema section, its plan (RewardConfig's keys, one output, no reference), its
memory kind, its pairwise metrics, and the mistakes refused with their recipe paths before anything loads."""
from __future__ import annotations

from dataclasses import replace

import pytest

from commandline import cli
from conftest import ROOT, base_recipe, write_jsonl
from runner.errors import RecipeError
from runner.evaluate.metrics import pairwise_metrics
from runner.plan import memory
from runner.plan.build import build_plan
from runner.plan.memory import Settings
from runner.recipe.load import load_recipe

PAIRS = [{"prompt": "reverse abc =", "chosen": " cba", "rejected": " abc"}]
# test_memory.py's small Llama: 2 layers, hidden 64, vocab 100, untied head
SMALL = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": 100, "tie_word_embeddings": False}


def reward_recipe(tmp_path, **sections) -> dict:
    write_jsonl(tmp_path / "train.jsonl", PAIRS)
    return base_recipe(tmp_path, task="reward", **sections)


def problems(recipe_file, recipe) -> set[tuple[str, str]]:
    with pytest.raises(RecipeError) as info:
        build_plan(load_recipe(recipe_file(recipe)))
    return {(p.path, p.message) for p in info.value.problems}


def test_the_plan_passes_reward_config_keys_and_fixes_one_output(tmp_path, recipe_file):
    recipe = reward_recipe(tmp_path, training={"center_rewards_coefficient": 0.01, "max_length": 32},
                           data={"eval_fraction": 0.5})
    plan = build_plan(load_recipe(recipe_file(recipe)))
    config = plan["trainer"]["config"]
    assert config["center_rewards_coefficient"] == 0.01 and config["max_length"] == 32
    assert config["disable_dropout"] is True and config["learning_rate"] == 1e-4  # TRL's RewardConfig defaults
    assert "beta" not in config and plan["trainer"]["reference_model"] is None
    assert plan["model"]["task_config"] == {"num_labels": 1} and plan["model"]["ignore_mismatched_sizes"]
    assert plan["data"]["format"] == "preference" and plan["peft"] is None
    assert plan["evaluation"]["metrics"] == ["loss", "pairwise_accuracy", "mean_margin"]
    assert plan["fast_defaults"]["settings"]["/training/pad_to_multiple_of"]["recipe"] is None  # decided at launch


def test_lora_targets_the_score_head_by_name_and_takes_peft_seq_cls(tmp_path, recipe_file):
    recipe = reward_recipe(tmp_path, peft={"method": "lora", "r": 4, "target_modules": ["q_proj", "score"]})
    plan = build_plan(load_recipe(recipe_file(recipe)))
    assert plan["peft"]["kwargs"]["task_type"] == "SEQ_CLS"  # peft then trains and saves the head (modules_to_save)
    assert problems(recipe_file, {**recipe, "peft": {"method": "lora", "target_modules": ["lm_head"]}}) == {
        ("/peft/target_modules/0", "'lm_head' is not a linear module of this llama model")}


@pytest.mark.parametrize("section, value, expected", [
    ("data", {"format": "labelled"}, ("/data/format", "task 'reward' does not read format 'labelled'")),
    ("evaluation", {"metrics": ["accuracy"]},
     ("/evaluation/metrics/0", "'accuracy' does not apply to task 'reward'")),
    ("evaluation", {"metrics": ["rouge"]}, ("/evaluation/metrics/0", "'rouge' does not apply to task 'reward'")),
    ("evaluation", {"retention": {"path": "train.jsonl"}},
     ("/evaluation/retention", "task 'reward' has no language-model loss to measure forgetting with")),
    ("model", {"chat_template": "t.jinja"}, ("/model/chat_template", "file not found: {tmp}/t.jinja")),
])
def test_cross_field_mistakes_name_their_path(tmp_path, recipe_file, section, value, expected):
    sections = {"data": {"eval_fraction": 0.5}}
    sections[section] = {**sections.get(section, {}), **value}
    recipe = reward_recipe(tmp_path, **sections)
    path, message = expected
    assert (path, message.format(tmp=tmp_path)) in problems(recipe_file, recipe)


def test_dpo_keys_are_refused_under_reward_with_the_task_that_has_them(tmp_path, recipe_file):
    recipe = reward_recipe(tmp_path, training={"beta": 0.1})
    with pytest.raises(RecipeError) as info:
        load_recipe(recipe_file(recipe))
    (problem,) = info.value.problems
    assert problem.path == "/training/beta" and "belongs to task ['dpo', 'grpo', 'rloo', 'kto', 'distill']" in problem.hint


def test_a_labelled_reward_recipe_exits_2_naming_the_format(tmp_path, recipe_file):
    path = recipe_file(reward_recipe(tmp_path, data={"format": "labelled", "train": {"path": "train.jsonl"}}))
    result = cli("validate", str(path))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "/data/format: task 'reward' does not read format 'labelled'" in result.stderr
    assert "its formats: preference, sharegpt_preference" in result.stderr


def test_the_shipped_reward_recipe_plans_with_both_rows_counted():
    plan = build_plan(load_recipe(ROOT / "recipes" / "reward_lora.json"))
    assert plan["task"] == "reward" and plan["peft"]["method"] == "lora"
    assert any("32 chosen + rejected rows of 64 tokens" in line for line in plan["memory"]["assumptions"])
    assert plan["memory"]["tokens_per_micro_batch"] == 32 * 2 * 64


def test_the_reward_memory_kind_stacks_pairs_and_has_no_lm_head():
    """Two rows per example like DPO (no reference), and no vocabulary-wide head or its workspace like
    classification."""
    sft = memory.peak(SMALL, Settings(batch=2, length=8))
    classification = memory.peak(SMALL, replace(Settings(batch=2, length=8), kind="classification"))
    dpo = memory.peak(SMALL, replace(Settings(batch=2, length=8), kind="dpo"))
    reward = memory.peak(SMALL, replace(Settings(batch=2, length=8), kind="reward"))
    assert reward["tokens_per_micro_batch"] == dpo["tokens_per_micro_batch"] == 2 * sft["tokens_per_micro_batch"]
    assert reward["parts"]["weights"] == classification["parts"]["weights"] == sft["parts"]["weights"] - 100 * 64 * 2
    assert reward["parts"]["reference_model"] == 0
    assert reward["parts"]["lm_head_workspace_backward"] == 0 and reward["parts"]["lm_head_saved"] > 0  # final norm
    assert reward["parts"]["activations_saved"] == 2 * classification["parts"]["activations_saved"]


def test_pairwise_metrics():
    # margins 1.5, -0.5, 0 (a tie is not a win), 2: accuracy 2/4, mean margin 3/4
    found = pairwise_metrics([2.0, 0.5, 1.0, 0.0], [0.5, 1.0, 1.0, -2.0])
    assert found == {"pairwise_accuracy": 0.5, "mean_margin": 0.75, "pairs": 4}
    with pytest.raises(ValueError):
        pairwise_metrics([1.0], [])
