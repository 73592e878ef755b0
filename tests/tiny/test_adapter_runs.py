"""An SFT adapter run as the start of the next run, on the tiny Llama (random start weights the run keeps in its
directory: the hardest base to find again). What must hold: the next run starts from the run's model, not its base
(its held-out loss before training is the run's after it, to float precision); it trains; the next run's own model
reloads (eval) through the chain; a KL reference is the run's model; and the run it starts from is left as it was."""
from __future__ import annotations

import json

import pytest

from conftest import ROOT, TINY_MODEL, write_json
from faults import Snapshot
from runner.commands.inference import evaluate_run
from runner.commands.merge import merge
from runner.commands.run import run
from runner.plan.build import build_plan
from runner.recipe.load import load_recipe

REVERSE = ROOT / "recipes" / "assets" / "reverse"
LORA = {"method": "lora", "r": 8}
TRAINING = {"learning_rate": 5e-3, "per_device_train_batch_size": 32, "per_device_eval_batch_size": 64,
            "max_length": 64, "logging_steps": 10, "save_strategy": "no", "bf16": False}  # float32: exact comparisons


def recipe(output_dir, model: dict, **sections) -> dict:
    return {"name": output_dir.name, "model": model,
            "data": {"format": "prompt_completion", "train": {"path": str(REVERSE / "train.jsonl")},
                     "eval": {"path": str(REVERSE / "eval.jsonl")}},
            "training": TRAINING, "evaluation": {"metrics": ["loss"], "max_examples": 64},
            "output": {"dir": str(output_dir)}, **sections}


# a new adapter from zero takes the SFT run's rate; an adapter that trains on, a gentler one (fresh Adam moments
# at the run's rate undo some of its training first); every weight, gentler still
LEARNING_RATES = {("merge", "lora"): 5e-3, ("train", "lora"): 1e-3, ("merge", "none"): 2e-3}


def same_logits(run_dir, merged_dir) -> bool:
    """The run's model as `eval` and `predict` load it and the merged copy `merge` wrote give the same logits."""
    import torch
    from transformers import AutoModelForCausalLM

    from runner.commands.finished import load_trained, read_plan

    ids = torch.tensor([[1, 5, 9, 13, 17, 21, 25]])
    with torch.no_grad():
        trained = load_trained(run_dir, read_plan(run_dir)).eval()(ids).logits
        merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()(ids).logits
    return torch.allclose(trained, merged, atol=1e-5)


def run_recipe(path, doc: dict) -> tuple[dict, dict]:
    plan = build_plan(load_recipe(write_json(path, doc)))
    return plan, run(plan, argv=["test"])


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    """A LoRA SFT run on a randomly initialised model (60 steps, ~6 s): its adapter moved the model."""
    folder = tmp_path_factory.mktemp("adapter-run")
    doc = recipe(folder / "sft-lora", {"name_or_path": str(TINY_MODEL), "init": "random"}, peft=LORA,
                 training={**TRAINING, "max_steps": 60},
                 evaluation={"metrics": ["loss"], "max_examples": 64, "baseline": True})
    _, manifest = run_recipe(folder / "sft.json", doc)
    losses = manifest["metrics"]["before"]["loss"], manifest["metrics"]["after"]["loss"]
    print(f"sft run: held-out loss {losses[0]:.4f} -> {losses[1]:.4f}")
    assert losses[0] > losses[1] + 0.2, losses  # measured 5.58 -> 4.63: the base alone is far from the run's model
    return folder / "sft-lora", manifest


@pytest.mark.parametrize("adapter, peft", [("merge", LORA), ("merge", {"method": "none"}), ("train", LORA)],
                         ids=["merge-new-lora", "merge-full", "train-on"])
def test_the_next_run_starts_from_the_runs_model_and_trains_it(tmp_path, sft_run, adapter, peft):
    run_dir, sft = sft_run
    kept = Snapshot(run_dir)
    doc = recipe(tmp_path / "next", {"name_or_path": str(run_dir), "adapter": adapter}, peft=peft,
                 training={**TRAINING, "max_steps": 20, "learning_rate": LEARNING_RATES[adapter, peft["method"]]},
                 evaluation={"metrics": ["loss"], "max_examples": 64, "baseline": True})
    plan, manifest = run_recipe(tmp_path / "next.json", doc)
    before, after = manifest["metrics"]["before"]["loss"], manifest["metrics"]["after"]["loss"]
    print(f"{adapter} {peft['method']}: sft run's loss {sft['metrics']['after']['loss']:.5f}; next run "
          f"{before:.5f} -> {after:.5f}")
    # the adapter is in the start model (the base alone scores 5.58, the sft_run fixture checks it)
    assert before == pytest.approx(sft["metrics"]["after"]["loss"], rel=1e-5)
    assert after < before - 0.005
    # the next run's model loads again through the chain: eval measures what the run measured at its end
    assert evaluate_run(plan, tmp_path / "next")["after"]["loss"] == pytest.approx(after, rel=1e-5)
    kept.assert_unchanged()  # the run it started from is read, never written
    saved = tmp_path / "next" / "adapter_config.json"
    if peft["method"] == "none":
        assert not saved.exists() and (tmp_path / "next" / "model.safetensors").is_file()
    elif adapter == "merge":  # a new adapter on the merged model records the run as its base
        assert json.loads(saved.read_text())["base_model_name_or_path"] == str(run_dir)
    else:  # the run's adapter, trained on: on the run's base, with its settings
        config = json.loads(saved.read_text())
        assert (config["base_model_name_or_path"], config["r"]) == (str(run_dir / "base_model"), 8)
    if peft["method"] != "none":  # `merge` rebuilds the same model: the run's start, and its adapter on top
        assert same_logits(tmp_path / "next", merge(tmp_path / "next", tmp_path / "merged")["output_dir"])


def test_grpo_training_on_the_runs_adapter_keeps_the_runs_model_as_its_kl_reference(tmp_path, sft_run):
    """TRL keeps a frozen copy of an adapter it is given (its "ref" adapter): at the first step the policy is the
    reference, KL exactly 0. The base without the adapter, the other possible reference, differs from it."""
    from runner.train.models import load_model

    run_dir, _ = sft_run
    doc = recipe(tmp_path / "grpo", {"name_or_path": str(run_dir), "adapter": "train"}, task="grpo", peft=LORA,
                 rewards=[{"type": "exact_match"}],
                 training={"max_steps": 2, "per_device_train_batch_size": 16, "num_generations": 4, "beta": 0.04,
                           "max_completion_length": 8, "disable_dropout": True, "logging_steps": 1,
                           "save_strategy": "no"},
                 evaluation={"metrics": ["rewards"], "max_examples": 8})
    doc["data"] = {**doc["data"], "format": "prompt_only", "columns": {"answer": "completion"}}
    plan, manifest = run_recipe(tmp_path / "grpo.json", doc)
    assert plan["trainer"]["reference_model"] == "adapter-copy"
    kl = [entry["kl"] for entry in manifest["history"] if "kl" in entry]
    assert kl[0] == 0.0, kl

    import torch

    model = load_model(plan["model"], seed=0).eval()
    ids = torch.tensor([[1, 5, 9, 13, 17, 21]])
    with torch.no_grad():
        with model.disable_adapter():
            base = model(ids).logits
        assert (model(ids).logits - base).abs().max() > 1e-3


@pytest.mark.parametrize("adapter", ["merge", "train"])
def test_a_4bit_recipe_starts_from_the_runs_model_in_4bit(tmp_path, sft_run, adapter):
    """merge: the adapter merges into the full-precision base, then the merged weights are quantized (a low-rank
    update added to 4-bit blocks would be rounded away); train: the run's adapter on a 4-bit base (QLoRA).
    Measured: start loss 4.6350 (merge) and 4.6338 (train) against the run's 4.6336."""
    run_dir, sft = sft_run
    doc = recipe(tmp_path / "next", {"name_or_path": str(run_dir), "adapter": adapter,
                                     "quantization": {"method": "bnb_4bit", "bnb_4bit_compute_dtype": "float32"}},
                 peft=LORA, training={**TRAINING, "max_steps": 5, "learning_rate": 1e-3},
                 evaluation={"metrics": ["loss"], "max_examples": 64, "baseline": True})
    plan = build_plan(load_recipe(write_json(tmp_path / "next.json", doc)))
    from runner.commands.run import prepare, train

    prepared = prepare(plan)
    layers = {type(m).__name__ for m in prepared.trainer.model.modules()}
    assert "Linear4bit" in layers, layers
    manifest = train(prepared.plan, prepared, ["test"])
    before = manifest["metrics"]["before"]["loss"]
    print(f"4-bit {adapter}: start {before:.4f}, the run's {sft['metrics']['after']['loss']:.4f}")
    # 4-bit rounding moves the loss a little; the base alone is 0.95 away (the sft_run fixture)
    assert before == pytest.approx(sft["metrics"]["after"]["loss"], abs=0.05)


def test_a_changed_start_adapter_is_refused_on_resume_and_eval(tmp_path, sft_run):
    """The plan records the sha256 of the adapter a run starts from. If that run is replaced (trained again into
    the same directory, say), resuming the next run or reloading its model would put its training on another start
    model: both are refused, naming the run, and nothing is written."""
    import shutil

    from faults import interrupt_at
    from runner.commands.run import prepare, train
    from runner.errors import RecipeError
    from runner.train.resume import RunInterrupted

    start = tmp_path / "sft-lora"
    shutil.copytree(sft_run[0], start)
    doc = recipe(tmp_path / "next", {"name_or_path": str(start), "adapter": "merge"}, peft=LORA,
                 training={**TRAINING, "max_steps": 4, "save_strategy": "steps", "save_steps": 2})
    path = write_json(tmp_path / "next.json", doc)
    plan = build_plan(load_recipe(path))
    assert len(plan["model"]["adapter_run"]["adapter_sha256"]) == 64
    prepared = prepare(plan)
    prepared.trainer.add_callback(interrupt_at(2))
    with pytest.raises(RunInterrupted):
        train(prepared.plan, prepared, ["test"])

    weights = start / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")  # another adapter in the same place
    kept = Snapshot(tmp_path / "next")
    doc["output"]["if_exists"] = "resume"
    with pytest.raises(RecipeError) as info:
        prepare(build_plan(load_recipe(write_json(tmp_path / "next.json", doc))))
    [problem] = info.value.problems
    assert (problem.path, problem.hint) == ("/model/name_or_path", "restore that run's adapter, or start this run "
                                                                   "over with --overwrite")
    assert problem.message.startswith(f"the adapter in {start} has changed since this run started from it")
    with pytest.raises(RecipeError) as info:
        load_trained_checkpoint(tmp_path / "next")
    assert info.value.problems[0].message == problem.message
    kept.assert_unchanged()


def load_trained_checkpoint(run_dir):
    """What `predict RUN_DIR/checkpoint-2` loads: the checkpoint's adapter on the run's start model."""
    from runner.commands.finished import load_trained, read_plan

    return load_trained(run_dir / "checkpoint-2", read_plan(run_dir))


def test_a_reward_model_starts_from_the_lora_sft_run_merged(tmp_path, sft_run):
    """The RLHF chain's second step from an adapter run: its LoRA merged into the transformer blocks of a reward
    model (the score head is new), which learns to tell the right reversal from a wrong one."""
    run_dir, _ = sft_run
    pairs = ROOT / "recipes" / "assets" / "reverse_near_miss"
    doc = recipe(tmp_path / "reward", {"name_or_path": str(run_dir), "adapter": "merge"}, task="reward", peft=LORA,
                 training={**TRAINING, "max_steps": 150, "learning_rate": 3e-3},
                 evaluation={"metrics": ["pairwise_accuracy"], "max_examples": 200, "baseline": True})
    doc["data"] = {"format": "preference", "train": {"path": str(pairs / "train.jsonl")},
                   "eval": {"path": str(pairs / "eval.jsonl")}}
    _, manifest = run_recipe(tmp_path / "reward.json", doc)
    before, after = (manifest["metrics"][k]["pairwise_accuracy"] for k in ("before", "after"))
    print(f"reward model from the merged LoRA run: pairwise accuracy {before:.2f} -> {after:.2f}")
    assert after > max(before, 0.5) + 0.1

    # GRPO scores with it as `eval` loads it: its LoRA on the merged SFT run, not on the SFT run's base
    import torch

    from runner.commands.finished import load_trained, read_plan
    from runner.train.rewards import reward_model

    scorer, tokenizer = reward_model({"path": str(tmp_path / "reward"), "where": "/rewards/0"})
    batch = tokenizer(["reverse abc = cba", "reverse abc = abc"], return_tensors="pt", padding=True)
    with torch.no_grad():
        scores = scorer(**batch).logits
        evaluated = load_trained(tmp_path / "reward", read_plan(tmp_path / "reward")).eval()(**batch).logits
    assert torch.allclose(scores, evaluated, atol=1e-5), (scores, evaluated)


def test_a_run_chained_from_a_chained_run_starts_where_it_ended(tmp_path, sft_run):
    """sft_run -> B (trains its adapter on) -> C (merges B's): C's start is B's end, on sft_run's random base."""
    run_dir, _ = sft_run
    chain = {"b": ({"name_or_path": str(run_dir), "adapter": "train"}, 10),
             "c": ({"name_or_path": str(tmp_path / "b"), "adapter": "merge"}, 2)}
    losses = {}
    for name, (model, steps) in chain.items():
        doc = recipe(tmp_path / name, model, peft=LORA, training={**TRAINING, "max_steps": steps,
                                                                  "learning_rate": 1e-3},
                     evaluation={"metrics": ["loss"], "max_examples": 64, "baseline": True})
        _, manifest = run_recipe(tmp_path / f"{name}.json", doc)
        losses[name] = manifest["metrics"]["before"]["loss"], manifest["metrics"]["after"]["loss"]
    print(f"chained twice: {losses}")
    assert losses["c"][0] == pytest.approx(losses["b"][1], rel=1e-5) and losses["b"][1] != losses["b"][0]
