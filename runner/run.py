"""Plan -> trained model and run records. The only stage that touches weights.

Works unchanged in one process or under `accelerate launch` with several: every process loads
data and model and trains; only the main process writes records.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from . import data, models, outputs
from .trainer import build_trainer


def run(plan: dict, argv: list[str] | None = None) -> dict:
    """Train as planned; returns the final manifest (the content of run.json)."""
    from accelerate import PartialState

    hw = outputs.hardware()
    # On a CPU-only machine accelerate only forms a (gloo) process group when told cpu=True.
    state = PartialState(cpu=not hw["gpus"])
    hw["world_size"] = state.num_processes
    outputs.check_run_dir(plan["output_dir"], plan["recipe"]["output"]["if_exists"])
    state.wait_for_everyone()  # no process writes before every process has checked

    seed = plan["recipe"]["training"]["seed"]
    train_set, eval_set = data.load_splits(plan["data"], seed)
    tokenizer = models.load_tokenizer(plan["model"])
    model = models.load_model(plan["model"], seed)

    run_dir = Path(plan["output_dir"])
    moved = outputs.start_run_dir(plan["output_dir"]) if state.is_main_process else None
    if plan["peft"] is not None and plan["model"]["init"] == "random":
        keep_random_base(model, tokenizer, run_dir / "base_model", state.is_main_process)
    state.wait_for_everyone()

    trainer = build_trainer(plan, model, tokenizer, train_set, eval_set, hw)
    manifest = outputs.new_manifest(plan, hw, argv if argv is not None else sys.argv)
    manifest["parameters"] = models.count_parameters(trainer.model)
    manifest["examples"] = {"train": len(train_set), "eval": len(eval_set) if eval_set is not None else 0}
    if state.is_main_process:
        outputs.write_json(run_dir / "recipe.json", plan["recipe"])
        outputs.write_json(run_dir / "plan.json", plan)
        outputs.write_json(run_dir / outputs.MANIFEST, manifest)

    started = time.monotonic()
    try:
        train_metrics = trainer.train().metrics
        eval_metrics = trainer.evaluate() if eval_set is not None else {}
        trainer.save_model(plan["output_dir"])
    except BaseException as exc:
        if state.is_main_process:
            manifest.update(status="failed", finished_at=outputs.now(), error=f"{type(exc).__name__}: {exc}",
                            history=trainer.state.log_history)
            outputs.write_json(run_dir / outputs.MANIFEST, manifest)
            if moved is not None:
                print(f"the run it was replacing is kept at {moved}", file=sys.stderr)
        raise

    manifest.update(
        status="finished",
        finished_at=outputs.now(),
        seconds=round(time.monotonic() - started, 2),
        metrics={"train": train_metrics, "eval": eval_metrics},
        history=trainer.state.log_history,
    )
    if state.is_main_process:
        outputs.write_json(run_dir / outputs.MANIFEST, manifest)
        outputs.finish_replacing(moved)
        print(summary(manifest), flush=True)
    state.wait_for_everyone()
    if state.num_processes > 1:
        state.destroy_process_group()  # else rank 0 sometimes aborts at exit with gloo
    return manifest


def keep_random_base(model, tokenizer, base_dir: Path, is_main: bool) -> None:
    """An adapter on randomly initialised weights is useless without them: save the base beside it.

    peft records `model.name_or_path` as the adapter's base, so pointing it at the saved copy
    makes the adapter load back with from_pretrained like any other.
    """
    if is_main:
        model.save_pretrained(base_dir)
        tokenizer.save_pretrained(base_dir)
    model.config._name_or_path = model.name_or_path = str(base_dir)


def summary(manifest: dict) -> str:
    """The few lines a user reads at the end of a run."""
    lines = [f"run '{manifest['name']}' finished in {manifest['seconds']:.1f} s -> {manifest['output_dir']}"]
    losses = [h["loss"] for h in manifest["history"] if "loss" in h]
    if losses:
        lines.append(f"  train loss: {losses[0]:.4f} (first log) -> {losses[-1]:.4f} (last log)")
    evals = [(h["step"], h["eval_loss"]) for h in manifest["history"] if "eval_loss" in h]
    if evals:
        (s0, l0), (s1, l1) = evals[0], evals[-1]
        lines.append(f"  eval loss:  {l0:.4f} (step {s0}) -> {l1:.4f} (step {s1})")
    params = manifest["parameters"]
    lines.append(f"  parameters: {params['trainable']:,} trainable of {params['total']:,}")
    lines.append("  load it with from_pretrained(output_dir); records in run.json, recipe.json, plan.json")
    return "\n".join(lines)
