"""A finished run, as the post-training commands (eval, predict, merge, quantize) read it: its plan, records,
model and tokenizer. They reach a run only through this module, never through the training code.

`predict` also takes a whole checkpoint of a run (RUN_DIR/checkpoint-N), e.g. of an interrupted run:
its weights and tokenizer are in the checkpoint, the plan and records in the run directory above it.
"""
from __future__ import annotations

import json
from pathlib import Path

from runner.errors import Problem, RecipeError
from runner.records import checkpoints, outputs
from runner.train import models


def read_plan(run_dir: Path, where: str = "RUN_DIR") -> dict:
    """The run's plan.json, as this version of the runner reads plans."""
    plan_file = run_dir / "plan.json"
    if not plan_file.is_file():
        raise RecipeError([Problem(where, f"{run_dir} has no plan.json: not a run directory",
                                   "point at the output directory of a finished run")])
    plan = json.loads(plan_file.read_text())
    plan["model"].setdefault("task", plan["task"])  # plans written before the model spec named its task
    return plan


def read_run(run_dir: Path, where: str = "RUN_DIR") -> dict:
    """The plan of a run that saved its model (merge, quantize)."""
    plan = read_plan(run_dir, where)
    if not (run_dir / "adapter_config.json").is_file() and not (run_dir / "config.json").is_file():
        raise RecipeError([Problem(where, f"{run_dir} holds no saved model (no config.json or adapter_config.json)",
                                   "the run did not finish; merge or quantize a finished run")])
    return plan


def load_trained(run_dir: Path, plan: dict, config_updates: dict | None = None):
    """The run's model: a saved full model, or the saved adapter on the base it names."""
    adapter = run_dir / "adapter_config.json"
    if not adapter.is_file() and not (run_dir / "config.json").is_file():
        raise RecipeError([Problem("--model", f"{run_dir} holds no saved model (no config.json or adapter_config.json)",
                                   "point at the run directory of a finished run")])
    if not adapter.is_file():  # saved as safetensors, also when trained from a GGUF file
        spec = {**plan["model"], "name_or_path": str(run_dir), "init": "pretrained", "config_overrides": {},
                "gguf_file": None, "adapter_run": None}
        return models.load_model(spec, plan["recipe"]["training"]["seed"])
    if config_updates is None and (run_dir / outputs.MANIFEST).is_file():  # e.g. the label map of a classifier
        config_updates = json.loads((run_dir / outputs.MANIFEST).read_text()).get("config_updates")
    if config_updates and "id2label" in config_updates:  # JSON made the ids strings
        config_updates = {**config_updates, "id2label": {int(k): v for k, v in config_updates["id2label"].items()}}
    return models.load_with_adapter(run_dir, plan["model"], plan["recipe"]["training"]["seed"], config_updates)


def saved_tokenizer(plan: dict, run_dir: Path, where: str):
    """The tokenizer saved with the run (its chat template included), not the recipe's source."""
    return models.load_tokenizer({**plan["model"], "tokenizer": str(run_dir), "tokenizer_revision": "main",
                                  "tokenizer_key": where, "chat_template": None, "tokenizer_gguf_file": None})


def check_same_run(plan: dict, run_dir: Path) -> None:
    """The recipe must describe the run it evaluates: same task, data format and tuning method."""
    saved = run_dir / "plan.json"
    if not saved.is_file():
        raise RecipeError([Problem("--model", f"{run_dir} has no plan.json: not a run directory")])
    trained = json.loads(saved.read_text())
    pairs = {"/task": (trained["task"], plan["task"]), "/data/format": (trained["data"]["format"], plan["data"]["format"]),
             "/peft/method": ((trained["peft"] or {}).get("method", "none"), (plan["peft"] or {}).get("method", "none"))}
    problems = [Problem(path, f"is {mine!r} here but the run in {run_dir} was trained with {theirs!r}",
                        "evaluate with the recipe the run was trained from (its recipe.json)")
                for path, (theirs, mine) in pairs.items() if theirs != mine]
    if problems:
        raise RecipeError(problems)


def records_dir(model_dir: Path) -> Path:
    """The directory with the run's plan.json and run.json: `model_dir` itself, or the run of a checkpoint."""
    name = model_dir.name
    if name.startswith("checkpoint-") and name[11:].isdigit() and (model_dir.parent / "plan.json").is_file():
        return model_dir.parent
    return model_dir


def check_whole(checkpoint: Path) -> None:
    """A checkpoint is used only when its files are those its marker lists (see checkpoints.damage)."""
    problems = checkpoints.damage(checkpoint)
    if problems:
        raise RecipeError([Problem("RUN_DIR", f"{checkpoint} is damaged: {'; '.join(problems)}",
                                   "use another checkpoint of the run (its files are left as they are)")])


def check_finished(run_dir: Path, manifest: dict, where: str, suggest_checkpoint: bool) -> None:
    """A run that stopped before saving its model (interrupted, failed, killed) is named as such, with its newest
    whole checkpoint and how to go on, instead of failing on the missing files (a tokenizer error first)."""
    saved = (run_dir / "config.json").is_file() or (run_dir / "adapter_config.json").is_file()
    status = manifest.get("status")
    if saved or status in (None, "finished"):
        return  # a finished run without its model is load_trained's error
    checkpoint, _ = checkpoints.whole_checkpoint(run_dir)
    command = f"python -m runner {manifest.get('recipe_file') or 'RECIPE'}"
    resume_it = manifest.get("resume_command") or f"{command} --resume"  # run.json's own, where the run wrote one
    # the same command (every --set, so the same output.dir) starting over; never the recipe's bare default
    again = resume_it.removesuffix(" --resume") + " --overwrite" if manifest.get("resume_command") else \
        f"{command} --set output.dir={run_dir} --overwrite"
    why = f"{run_dir} holds no trained model: the run did not finish (run.json status '{status}'" + \
        (": still training, or killed before it could record why)" if status == "running" else ")")
    kept = sorted(run_dir.glob(".replaced-*"))
    if kept:  # an --overwrite that did not finish: the run it was replacing is still there, whole
        why += (f"; it was replacing an earlier run, which is kept in {kept[-1]} (an --overwrite deletes it "
                f"once a new run finishes: to keep it, move it out first, e.g. mv {kept[-1]} {run_dir}-earlier)")
    if checkpoint is None:
        raise RecipeError([Problem(where, f"{why} and has no whole checkpoint",
                                   f"train it again: {again}")])
    marker, _ = checkpoints.read_marker(checkpoint)
    also = f"; or predict with the checkpoint as it is: python -m runner predict {checkpoint}" \
        if suggest_checkpoint else ""
    raise RecipeError([Problem(where, f"{why}; its newest whole checkpoint is {checkpoint.name} "
                                      f"({checkpoints.progress(marker, checkpoint)})",
                               f"finish the run with: {resume_it}{also}")])
