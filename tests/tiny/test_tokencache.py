"""The tokenization cache: a second run loads what the trainer prepared instead of tokenizing; any input change misses.

Runs are real (TRL's SFTTrainer / DPOTrainer, transformers' Trainer on the tiny Llama); the cache's own
counters say whether preparation ran, and the trainer's dataset is read from the cache directory.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from assets import reverse_rows
from runner.data import load as data
from runner.train import models
from runner.data import tokencache
from runner.errors import RecipeError
from runner.plan.build import build_plan
from runner.recipe.load import load_recipe
from runner.commands.run import prepare, run
from conftest import TINY_MODEL, base_recipe, write_jsonl
from test_tasks import labelled_rows, preference_rows

ROWS = reverse_rows(32, seed=11)


def cache_dir(tmp_path) -> Path:
    """Beside the test's directory, not in it: the data files live there, and the cache never goes among them."""
    return tmp_path.with_name(tmp_path.name + "-cache")


def recipe_for(tmp_path, kind="sft", **sections):
    """A recipe of the given kind whose cache lives in tmp_path/cache."""
    if kind == "sft":
        write_jsonl(tmp_path / "train.jsonl", ROWS)
        recipe = base_recipe(tmp_path, data={"format": "prompt_completion", "train": {"path": "train.jsonl"},
                                             "eval": {"path": "train.jsonl"}})
    elif kind == "dpo":
        write_jsonl(tmp_path / "train.jsonl", preference_rows())
        recipe = base_recipe(tmp_path, task="dpo", data={"train": {"path": "train.jsonl"}, "eval_fraction": 0.25})
    else:
        write_jsonl(tmp_path / "train.jsonl", labelled_rows(48, seed=7))
        recipe = base_recipe(tmp_path, task="classification",
                             data={"format": "labelled", "train": {"path": "train.jsonl"}, "eval_fraction": 0.25,
                                   "columns": {"text": "sentence"}},
                             training={"max_length": 16})
    recipe["data"]["tokenization_cache"] = str(cache_dir(tmp_path))
    for key, value in sections.items():
        recipe[key] = {**recipe.get(key, {}), **value}
    return recipe


def plan_of(tmp_path, recipe, name="recipe.json"):
    path = tmp_path / name
    path.write_text(json.dumps(recipe))
    return build_plan(load_recipe(path))


def counted(fn):
    before = dict(tokencache.STATS)
    result = fn()
    return result, {k: tokencache.STATS[k] - before[k] for k in before}


def from_cache(dataset, root: Path) -> bool:
    return bool(dataset.cache_files) and all(Path(f["filename"]).is_relative_to(root) for f in dataset.cache_files)


@pytest.mark.parametrize("kind", ["sft", "dpo", "classification"])
def test_second_run_loads_the_prepared_data_without_tokenizing(tmp_path, kind):
    plan = plan_of(tmp_path, recipe_for(tmp_path, kind))
    first, stats = counted(lambda: prepare(plan).trainer)
    assert stats == {"hits": 0, "misses": 2}  # train and eval prepared by the library, then stored
    second, stats = counted(lambda: prepare(plan).trainer)
    assert stats == {"hits": 2, "misses": 0}  # nothing tokenized
    assert from_cache(second.train_dataset, cache_dir(tmp_path)) and from_cache(second.eval_dataset, cache_dir(tmp_path))
    assert second.train_dataset[:] == first.train_dataset[:]
    assert second.eval_dataset[:] == first.eval_dataset[:]


def train_key(plan) -> str:
    splits, _ = data.load_all(plan)
    tokenizer = models.load_tokenizer(plan["model"])
    settings = tokencache.data_settings(plan["trainer"]["config"])
    return tokencache.for_run(plan, splits, tokenizer, settings).key("train")


CHANGES = {
    "max_length": {"training": {"max_length": 48}},
    "packing": {"training": {"packing": True}},
    "completion_only_loss": {"training": {"completion_only_loss": False}},
    "seed": {"training": {"seed": 7}},
    "column mapping": {"data": {"columns": {"prompt": "prompt"}}},
    "row limit": {"data": {"train": {"path": "train.jsonl", "limit": 10}}},
    "format": {"data": {"format": "text"}},
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_each_input_change_misses(tmp_path, change):
    base = recipe_for(tmp_path)
    changed = recipe_for(tmp_path)
    for section, values in CHANGES[change].items():
        changed[section] = {**changed[section], **values}
    if change == "format":
        write_jsonl(tmp_path / "text.jsonl", [{"text": r["prompt"] + r["completion"]} for r in ROWS])
        changed["data"]["train"] = changed["data"]["eval"] = {"path": "text.jsonl"}
    assert train_key(plan_of(tmp_path, base)) != train_key(plan_of(tmp_path, changed, "changed.json"))


def test_data_content_tokenizer_chat_template_and_versions_are_in_the_key(tmp_path, monkeypatch):
    plan = plan_of(tmp_path, recipe_for(tmp_path))
    key = train_key(plan)
    # the same content with a new modification time still hits; other content misses
    os.utime(tmp_path / "train.jsonl", (1, 1))
    assert train_key(plan) == key
    write_jsonl(tmp_path / "train.jsonl", ROWS[:-1] + [{"prompt": "reverse abc =", "completion": " cba"}])
    assert train_key(plan) != key
    write_jsonl(tmp_path / "train.jsonl", ROWS)
    assert train_key(plan) == key
    # a tokenizer with another special token
    tokenizer_dir = tmp_path / "tok"
    shutil.copytree(TINY_MODEL, tokenizer_dir)
    config = json.loads((tokenizer_dir / "tokenizer_config.json").read_text())
    (tokenizer_dir / "tokenizer_config.json").write_text(json.dumps({**config, "pad_token": "<unk>"}))
    other = recipe_for(tmp_path, model={"tokenizer": str(tokenizer_dir)})
    assert train_key(plan_of(tmp_path, other, "tok.json")) != key
    # the recipe's own chat template (messages data)
    write_jsonl(tmp_path / "chat.jsonl", [{"messages": [{"role": "user", "content": r["prompt"]},
                                                        {"role": "assistant", "content": r["completion"]}]}
                                          for r in ROWS])
    template = tmp_path / "t.jinja"
    template.write_text((TINY_MODEL / "chat_template.jinja").read_text())
    chat = recipe_for(tmp_path, data={"format": "messages", "train": {"path": "chat.jsonl"},
                                      "eval": {"path": "chat.jsonl"}}, model={"chat_template": str(template)})
    chat_key = train_key(plan_of(tmp_path, chat, "chat.json"))
    template.write_text(template.read_text().replace("'<|' + message['role'] + '|>'", "'[' + message['role'] + ']'"))
    assert train_key(plan_of(tmp_path, chat, "chat.json")) != chat_key
    # the runner's version
    monkeypatch.setattr(tokencache, "__version__", "999")
    assert train_key(plan) != key


def test_settings_that_do_not_shape_the_data_still_hit(tmp_path):
    plan = plan_of(tmp_path, recipe_for(tmp_path))
    other = plan_of(tmp_path, recipe_for(tmp_path, training={"learning_rate": 0.1, "max_steps": 3,
                                                             "pad_to_multiple_of": 64, "use_liger_kernel": False},
                                         output={"dir": str(tmp_path / "elsewhere")}), "other.json")
    assert other["trainer"]["config"]["pad_to_multiple_of"] == 64 != plan["trainer"]["config"]["pad_to_multiple_of"]
    assert train_key(plan) == train_key(other)


def test_the_trained_weights_are_identical_with_and_without_the_cache(tmp_path):
    weights = []
    for i, cache in enumerate([False, str(cache_dir(tmp_path)), str(cache_dir(tmp_path))]):
        recipe = recipe_for(tmp_path, training={"max_steps": 6, "learning_rate": 5e-3, "packing": True,
                                                "per_device_train_batch_size": 4},
                            output={"dir": str(tmp_path / f"run{i}")})
        recipe["data"]["tokenization_cache"] = cache
        _, stats = counted(lambda: run(plan_of(tmp_path, recipe, f"r{i}.json"), argv=["test"]))
        assert stats["hits"] == (2 if i == 2 else 0) and stats["misses"] == (2 if i == 1 else 0), (i, stats)
        weights.append(load_file(tmp_path / f"run{i}" / "model.safetensors"))
    assert len(list(cache_dir(tmp_path).iterdir())) == 2  # train and eval, stored by the first cached run
    for other in weights[1:]:
        assert weights[0].keys() == other.keys()
        assert all(torch.equal(weights[0][k], other[k]) for k in weights[0])


def test_damaged_or_partial_entries_are_rebuilt(tmp_path):
    plan = plan_of(tmp_path, recipe_for(tmp_path))
    prepare(plan)
    entries = sorted(p for p in (cache_dir(tmp_path)).iterdir() if not p.name.startswith("."))
    assert len(entries) == 2
    arrow = next(entries[0].glob("*.arrow"))
    arrow.write_bytes(arrow.read_bytes()[:100])  # cut short
    (entries[1] / "entry.json").unlink()  # never completed
    (cache_dir(tmp_path) / ".tmp-leftover").mkdir()  # a writer's temporary directory is not an entry
    stale = cache_dir(tmp_path) / ".tmp-0123456789abcdef-4242-89abcdef"
    stale.mkdir()
    os.utime(stale, (0, 0))  # left by a writer that crashed long ago
    foreign = cache_dir(tmp_path) / ".tmp-someone-elses"
    foreign.mkdir()
    os.utime(foreign, (0, 0))  # old, but not a name the cache gives: never deleted
    trainer, stats = counted(lambda: prepare(plan).trainer)
    assert stats == {"hits": 0, "misses": 2}
    assert len(trainer.train_dataset) > 0
    assert not stale.exists() and (cache_dir(tmp_path) / ".tmp-leftover").is_dir() and foreign.is_dir()
    _, stats = counted(lambda: prepare(plan))
    assert stats == {"hits": 2, "misses": 0}


def test_cache_off_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("RECIPE_RUNNER_CACHE", str(tmp_path / "default"))
    recipe = recipe_for(tmp_path)
    recipe["data"]["tokenization_cache"] = False
    _, stats = counted(lambda: prepare(plan_of(tmp_path, recipe)))
    assert stats == {"hits": 0, "misses": 0}
    assert not (tmp_path / "default").exists() and not (cache_dir(tmp_path)).exists()


def test_default_location_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("RECIPE_RUNNER_CACHE", str(tmp_path / "env"))
    assert tokencache.cache_root(None) == tmp_path / "env" / "tokenized"
    monkeypatch.delenv("RECIPE_RUNNER_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert tokencache.cache_root(None) == tmp_path / "xdg" / "recipe-runner" / "tokenized"
    assert tokencache.cache_root(False) is None


def test_a_cache_among_the_data_files_is_refused(tmp_path):
    recipe = recipe_for(tmp_path)
    recipe["data"]["tokenization_cache"] = str(tmp_path)
    with pytest.raises(RecipeError) as info:
        plan_of(tmp_path, recipe)
    assert [p.path for p in info.value.problems] == ["/data/tokenization_cache"]


@pytest.mark.slow
def test_two_processes_agree_to_load_or_to_build(tmp_path):
    """Under `accelerate launch` every process must take the same path (TRL's preparation holds barriers)."""
    import subprocess
    import sys

    from conftest import ROOT
    from commandline import free_port

    recipe = recipe_for(tmp_path, training={"max_steps": 2})
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(recipe))
    outputs = []
    for attempt in range(2):
        result = subprocess.run(
            [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
             "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
             "--main_process_port", str(free_port()), "-m", "runner", str(path), "--overwrite"],
            cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"}, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        outputs.append(result.stderr)
    assert "tokenization cache: stored train" in outputs[0] and "hit for" not in outputs[0]
    assert outputs[1].count("tokenization cache: hit for train") == 1  # only the main process speaks
    assert "stored" not in outputs[1]
