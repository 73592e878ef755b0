"""Online RL (GRPO, RLOO) at scale on the tiny model: two CPU processes over gloo under the shipped
accelerate_configs/ (DDP, DeepSpeed ZeRO-2, ZeRO-3), every rank generating for its own prompts at every step; a
GRPO run interrupted after a checkpoint, resumed to the same losses and rewards as an uninterrupted run (in one
process, and under ZeRO-3 on two after a signal reached one rank; inside a reused generation, on the same generation
schedule); the plan's steps per epoch as TRL's sampler makes them.

The 2-process runs go through the runner under `accelerate launch` (tests/rank_probe.py adds only a record of the
prompts each rank stepped on and of each generation it ran).
"""
from __future__ import annotations

import collections
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, base_recipe, write_json
from commandline import free_port
from faults import interrupt_at

PROMPTS = ROOT / "recipes" / "assets" / "reverse"
CONFIGS = ROOT / "accelerate_configs"
LENGTH = [{"type": "length", "max_chars": 2}]  # -(characters beyond 2) / 2: a random policy's ~8 tokens score ~-2.6


def rl_recipe(folder, task: str = "grpo", **training) -> dict:
    recipe = base_recipe(folder, task=task, data={"train": {"path": str(PROMPTS / "train.jsonl"), "limit": 96},
                                                  "columns": {"answer": "completion"}})
    recipe["rewards"] = LENGTH
    recipe["training"] = {"max_steps": 24, "per_device_train_batch_size": 8, "num_generations": 4,
                          "max_completion_length": 8, "learning_rate": 5e-3, "logging_steps": 4,
                          "save_strategy": "no", "seed": 0, "beta": 0.0, **training}
    return recipe


def launched(config: str, *command: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """`accelerate launch` of 2 CPU processes under accelerate_configs/<config>.yaml, running `command`."""
    from runner.launch import launcher as launch

    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "accelerate.commands.launch",
                           *launch.launcher_args(CONFIGS / f"{config}.yaml", 2, 1),
                           "--main_process_port", str(free_port()), *command],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def logged(history: list[dict], key: str) -> list[float]:
    return [entry[key] for entry in history if key in entry]


# --- two processes --------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("task,config", [("grpo", "multi_gpu"), ("grpo", "deepspeed_zero2"),
                                         ("grpo", "deepspeed_zero3"), ("rloo", "multi_gpu"),
                                         ("rloo", "deepspeed_zero3")])
def test_online_rl_trains_on_two_processes_each_generating_for_its_own_prompts(task, config, tmp_path):
    """24 steps of 8 completions per rank (2 prompts x 4 each; 4 prompts per step in all): every rank generates at
    every step, for prompts no other rank has at that step, and the logged rewards and token counts are both ranks'.
    Under ZeRO-3 each rank holds a partition of the weights, gathered whole for generation (TRL's
    ds3_gather_for_generation, on by default). Measured on 2 CPU cores, logged every 4 steps: GRPO -2.55 -> -0.05
    (DDP, bf16 autocast), -2.55 -> -0.02 (ZeRO-2 and ZeRO-3, fp32, the same history), RLOO -2.54 -> -0.01 (DDP)
    and -2.55 -> -0.016 (ZeRO-3, 42 s);
    on the 16 held-out prompts -2.69 before, -0.02 to -0.016 after."""
    recipe = rl_recipe(tmp_path, task, max_steps=-1, num_train_epochs=1)  # as many steps as the plan counts
    recipe["data"]["eval"] = {"path": str(PROMPTS / "eval.jsonl"), "limit": 16}
    recipe["evaluation"] = {"baseline": True}  # the held-out mean reward before and after, measured on both ranks
    write_json(tmp_path / "recipe.json", recipe)
    result = launched(config, str(ROOT / "tests" / "rank_probe.py"), str(tmp_path / "recipe.json"),
                      str(tmp_path / "probe"))
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [json.loads((tmp_path / "probe" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2] and [r["status"] for r in ranks] == ["finished"] * 2
    engine = ranks[0]["engine"]
    assert engine["distributed_type"] == ("DistributedType.MULTI_CPU" if config == "multi_gpu"
                                          else "DistributedType.DEEPSPEED")
    assert (engine["sharded_params"] > 0) == ("zero3" in config), engine  # ZeRO-3 really partitioned the weights
    assert result.stdout.count("finished in") == 1, "only the main process reports and writes"

    # every rank joined every generation: 24 training generations of 8 completions each, 2 prompts x 4
    trained = [[g for g in r["generations"] if g["training"]] for r in ranks]
    assert [len(t) for t in trained] == [24, 24]
    for step, (mine, theirs) in enumerate(zip(*trained)):
        for generation in (mine, theirs):
            assert generation["completions"] == 8
            assert sorted(collections.Counter(generation["prompts"]).values()) == [4, 4], (step, generation)
        assert not set(mine["prompts"]) & set(theirs["prompts"]), f"step {step}: both ranks had the same prompt"
    # one epoch of the 96 prompts, each exactly once (TRL's sampler: 4 prompts per step x 24 steps)
    prompts = collections.Counter(p for t in trained for g in t for p in set(g["prompts"]))
    assert len(prompts) == 96 and set(prompts.values()) == {1}
    assert [len(r["seen"]) for r in ranks] == [24 * 8, 24 * 8]  # the rows each rank stepped on: its own prompts

    # the plan said so: 16 completions per generation, 8 by each process, 24 steps in the epoch (not 96 / 16 = 6)
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())["batch"]
    assert plan["generation"]["completions_per_generation"] == 16 and plan["generation"]["prompts_per_generation"] == 4
    assert "8 generated by each of 2 processes" in plan["generation"]["note"]
    assert plan["steps_per_epoch"] == plan["total_steps"] == 24
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["status"] == "finished" and record["hardware"]["world_size"] == 2
    history = record["history"]
    # TRL counts the tokens of both ranks' generations: the logged total is the sum of the two ranks' own counts
    both = sum(g["prompt_tokens"] + g["tokens"] for t in trained for g in t)
    assert logged(history, "num_tokens")[-1] == both
    rewards = logged(history, "rewards/length/mean")
    print(f"{task} {config}: rewards {rewards}, step times {logged(history, 'step_time')}, "
          f"metrics {record['metrics']}")
    assert len(rewards) == 6 and rewards[-1] > rewards[0] + 1.0, rewards
    before, after = record["metrics"]["before"], record["metrics"]["after"]
    assert after["rewards/length/mean"] > before["rewards/length/mean"] + 1.0, (before, after)


# --- resuming mid-RL ------------------------------------------------------------------------------------------



def _straight_and_resumed(tmp_path, stop_at: int, **training) -> tuple[dict, dict, dict]:
    """An uninterrupted run (a), and the same run (b) interrupted by Ctrl-C at the end of step `stop_at`, then
    resumed: the three run.json records (a, b as interrupted, b finished)."""
    from runner.commands.run import prepare, run, train
    from runner.plan.build import build_plan
    from runner.recipe.load import load_recipe
    from runner.train.resume import RunInterrupted

    def recipe(name):
        return write_json(tmp_path / f"{name}.json", {**rl_recipe(tmp_path, logging_steps=1, **training),
                                                       "output": {"dir": str(tmp_path / name)}})

    straight = run(build_plan(load_recipe(recipe("a"))), argv=["test"])
    path = recipe("b")
    prepared = prepare(build_plan(load_recipe(path)))
    prepared.trainer.add_callback(interrupt_at(stop_at))
    with pytest.raises(RunInterrupted):
        train(prepared.plan, prepared, ["test"])
    interrupted = json.loads((tmp_path / "b" / "run.json").read_text())
    resumed = run(build_plan(load_recipe(path, ["output.if_exists=resume"])), argv=["test"])
    return straight, interrupted, resumed


def test_an_interrupted_grpo_run_resumes_to_the_losses_and_rewards_of_an_uninterrupted_one(tmp_path):
    """Ctrl-C at step 3: the runner stops at the next step boundary with checkpoint-4; --resume continues at step 4
    and steps 5-8 generate, score and train exactly as an uninterrupted run does. What makes it exact: transformers
    restores the RNG states saved in the checkpoint (the sampling in generate draws from torch's), TRL's sampler
    is seeded (args.seed) and its batches are skipped up to the checkpoint, and with one generation per optimizer
    step (steps_per_generation = gradient_accumulation_steps, num_iterations 1) no generation is reused across
    the checkpoint (TRL does not save its buffer of completions: see the next test)."""
    from safetensors.torch import load_file
    import torch

    straight, interrupted, resumed = _straight_and_resumed(tmp_path, 3, max_steps=8, per_device_train_batch_size=16)
    assert interrupted["status"] == "interrupted"
    assert [h["step"] for h in interrupted["history"] if "loss" in h] == [1, 2, 3, 4]
    assert sorted(p.name for p in (tmp_path / "b").glob("checkpoint-*")) == ["checkpoint-4"]
    assert resumed["status"] == "finished" and resumed["resumed_from"] == {"checkpoint": "checkpoint-4", "step": 4}
    steps = [h for h in resumed["history"] if "loss" in h]
    assert [h["step"] for h in steps] == list(range(1, 9))  # the history goes on from the checkpoint's, no repeats
    keys = ("loss", "rewards/length/mean", "completions/mean_length", "num_tokens")
    expected = [{k: h[k] for k in keys} for h in straight["history"] if "loss" in h]
    assert [{k: h[k] for k in keys} for h in steps] == expected  # exactly: same completions, same rewards
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    at_checkpoint = load_file(tmp_path / "b" / "checkpoint-4" / "model.safetensors")
    assert any(not torch.equal(at_checkpoint[k], b[k]) for k in b)  # steps 5-8 trained after the resume


def test_a_grpo_run_resumed_inside_a_reused_generation_keeps_its_generation_schedule(tmp_path):
    """num_iterations 2: each generation is trained on at two optimizer steps (generated at 1, 3, 5). Interrupted
    at step 2, the checkpoint (3) falls after a generation's first use; TRL saves neither its buffer of
    completions nor its step counter. The runner restores the counter (runner/compat.py
    generation_schedule_on_resume): the resumed run regenerates the lost buffer at step 4 (fresh completions for
    the same prompts, so from there on the numbers differ from an uninterrupted run's) and then generates at 5 as
    the uninterrupted run does; without the counter it generated at 4 and 6 instead (one step late from then on)."""
    straight, interrupted, resumed = _straight_and_resumed(tmp_path, 2, max_steps=6, per_device_train_batch_size=16,
                                                           num_iterations=2)
    assert sorted(p.name for p in (tmp_path / "b").glob("checkpoint-*")) == ["checkpoint-3"]
    assert resumed["status"] == "finished" and resumed["resumed_from"]["step"] == 3
    generated = lambda m: [h["step"] for h in m["history"] if "rewards/length/mean" in h]  # noqa: E731
    assert generated(straight) == [1, 3, 5]
    assert generated(resumed) == [1, 3, 4, 5]
    assert [h["step"] for h in resumed["history"] if "loss" in h] == list(range(1, 7))



@pytest.mark.slow
def test_a_grpo_run_under_zero3_stopped_on_one_rank_resumes_on_two_processes_as_if_never_stopped(tmp_path):
    """SIGTERM to rank 1 at step 3 (tests/signal_probe.py): both ranks stop together with checkpoint-4 (ZeRO-3
    partitions, one RNG state per rank); `--resume` under the same launch finishes, and steps 5-8 match an
    uninterrupted 2-process run exactly. Measured the same under DDP (checked by hand, not run here for time)."""
    for name in ("a", "b"):
        write_json(tmp_path / f"{name}.json", {**rl_recipe(tmp_path, max_steps=8, logging_steps=1),
                                               "output": {"dir": str(tmp_path / name)}})
    straight = launched("deepspeed_zero3", "-m", "runner", "run", str(tmp_path / "a.json"), timeout=300)
    assert straight.returncode == 0, straight.stderr[-3000:]
    stopped = launched("deepspeed_zero3", str(ROOT / "tests" / "signal_probe.py"), str(tmp_path / "b.json"),
                       timeout=300)
    assert stopped.returncode != 0 and "exitcode  : 143" in stopped.stderr, stopped.stderr[-3000:]
    checkpoint = tmp_path / "b" / "checkpoint-4"
    assert sorted(p.name for p in (tmp_path / "b").glob("checkpoint-*")) == ["checkpoint-4"]
    assert {p.name for p in checkpoint.glob("rng_state_*.pth")} == {"rng_state_0.pth", "rng_state_1.pth"}
    resumed = launched("deepspeed_zero3", "-m", "runner", "run", str(tmp_path / "b.json"), "--resume", timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = (json.loads((tmp_path / name / "run.json").read_text()) for name in ("a", "b"))
    assert b["status"] == "finished" and b["resumed_from"] == {"checkpoint": "checkpoint-4", "step": 4}
    keys = ("step", "loss", "rewards/length/mean", "num_tokens")
    steps = lambda m: [tuple(h[k] for k in keys) for h in m["history"] if "loss" in h]  # noqa: E731
    assert len(steps(a)) == 8 and steps(b) == steps(a), (steps(a), steps(b))

# --- the plan's step count -------------------------------------------------------------------------------------


def test_the_plan_counts_the_optimizer_steps_trls_sampler_makes(tmp_path):
    """95 prompts, 2 per generation (4 per device x 2 accumulation / 4 completions each), each generation trained on
    twice (num_iterations): 47 whole generations x 2 micro-steps x 2 iterations / 2 accumulation = 94 steps per
    epoch, where one row per example would say ceil(95 / 8) = 12. Checked against the trainer's own dataloader."""
    import math

    from runner.commands.run import prepare
    from runner.plan.build import build_plan
    from runner.recipe.load import load_recipe

    recipe = rl_recipe(tmp_path, max_steps=-1, num_train_epochs=1, per_device_train_batch_size=4,
                       gradient_accumulation_steps=2, num_iterations=2)
    recipe["data"]["train"]["limit"] = 95
    plan = build_plan(load_recipe(write_json(tmp_path / "recipe.json", recipe)))
    assert plan["batch"]["steps_per_epoch"] == plan["batch"]["total_steps"] == 94
    trainer = prepare(plan).trainer
    assert math.ceil(len(trainer.get_train_dataloader()) / 2) == 94


@pytest.mark.slow
def test_a_reward_model_scores_whole_on_every_rank_under_zero3(tmp_path):
    """Under ZeRO-3 transformers would load the reward model partitioned (zero.Init), unusable outside a DeepSpeed
    engine; the runner's scorer loads it whole on each rank (compat.whole_model_loading) and its scores are logged."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from conftest import TINY_MODEL

    scorer = tmp_path / "scorer"
    AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(TINY_MODEL, num_labels=1)) \
        .save_pretrained(scorer)
    AutoTokenizer.from_pretrained(TINY_MODEL).save_pretrained(scorer)
    recipe = rl_recipe(tmp_path, max_steps=2, logging_steps=1)
    recipe["rewards"] = LENGTH + [{"type": "model", "path": str(scorer), "name": "scorer", "weight": 0.1}]
    write_json(tmp_path / "recipe.json", recipe)
    result = launched("deepspeed_zero3", "-m", "runner", str(tmp_path / "recipe.json"))
    assert result.returncode == 0, result.stderr[-4000:]
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["status"] == "finished" and record["hardware"]["world_size"] == 2
    scores = logged(record["history"], "rewards/scorer/mean")
    assert len(scores) == 2 and all(isinstance(s, float) for s in scores), scores
