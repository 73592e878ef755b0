"""Plan -> trained model and run records. The only stage that touches weights.

Two steps: `prepare` claims the run directory (one run owns it at a time) and does everything that
can fail on the user's input (output directory, data, model, trainer construction), writing nothing
else there; `train` then trains, writes the records and releases the claim. Works unchanged in one process or under `accelerate launch` with
several: every process prepares and trains; only the main process writes.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from runner import compat
from runner.records import atomic, checkpoints, claim, summary
from runner.data import load as data
from runner.errors import RecipeError
from runner.plan import adapter_runs, deepspeed_json
from runner.launch import diskspace, machine
from runner.launch import ranks as distributed
from runner.evaluate import measure as evaluation
from runner.launch import decide as fast
from runner.records import model_card
from runner.train import models
from runner.records import outputs
from runner.records import report
from runner.train import resume
from runner.records.secrets import redact
from runner.train.task_code import TASK_CODE
from runner.train import session
from runner.train.random_base import BASE_MODEL_DIR, keep_random_base, save_random_base
from runner.train.trainer import launch_config, library_name, out_of_memory_as_advice, stop_if_diverged
from runner.plan.tasks import TASKS, data_format
from runner.plan.topology import Topology


@dataclass
class Prepared:
    plan: dict  # the plan with what the data resolved (class weights), as saved in plan.json
    trainer: object
    state: object  # accelerate.PartialState
    hardware: dict
    trainer_config: dict  # the config kwargs actually used, launch decisions included
    splits: data.Splits
    config_updates: dict  # what the data added to the model config (a label map), needed to reload an adapter
    data_shape: dict  # facts about the data the trainer saw (conversational or not), for `predict`
    random_base: dict | None  # the start weights of a random model under an adapter, saved by train()
    resume_from: Path | None  # the complete checkpoint this run continues from
    watcher: object  # resume.StopOnSignal: which signal, if any, stopped training
    data_warnings: list[str]  # the data check's findings that do not stop the run (leakage, truncation)


def run(plan: dict, argv: list[str] | None = None) -> dict:
    """Train as planned; returns the final manifest (the content of run.json)."""
    prepared = prepare(plan)
    return train(prepared.plan, prepared, argv if argv is not None else sys.argv)


def prepare(plan: dict) -> Prepared:
    """Claim and check the output directory, load data and model, build the trainer. Writes nothing else there;
    released again when it fails."""
    from accelerate import PartialState

    hw = machine.hardware()
    distributed.check_engine(plan["topology"], len(hw["gpus"]))  # e.g. FSDP on a CPU machine: plain DDP otherwise
    plan = fast.resolve(plan, hw)  # the null settings, decided for this machine
    launched = launch_config(plan, hw)  # bf16 left null is decided here too: the user's DeepSpeed JSON must agree
    # On a CPU-only machine accelerate only forms a (gloo) process group when told cpu=True: the use_cpu decision.
    state = PartialState(cpu=launched["use_cpu"])
    hw["world_size"] = state.num_processes
    if state.is_main_process:
        fast.announce(plan)
    deepspeed_json.check_precision(plan["recipe"], Topology(**plan["topology"]), launched["bf16"], launched.get("fp16"))
    # every rank resolved the same recipe and decided the same settings, and collectives work
    cpu_group = distributed.agree(plan, state)
    run_dir = Path(plan["output_dir"])
    outputs.check_output_path(run_dir)
    created = distributed.on_main(state, cpu_group, lambda: claim.claim(run_dir))  # one run per directory
    try:
        return _prepare(plan, state, hw, cpu_group)
    except BaseException:
        if state.is_main_process:
            claim.release(run_dir, created)  # a run that never started leaves nothing behind
        raise


def _prepare(plan: dict, state, hw: dict, cpu_group) -> Prepared:
    if_exists, run_dir = plan["recipe"]["output"]["if_exists"], Path(plan["output_dir"])
    outputs.check_run_dir(plan["output_dir"], if_exists)
    resume_from = None
    if if_exists == "resume" and run_dir.is_dir():  # verified once (hashing every file), every rank takes the answer
        resume_from = distributed.on_main(state, cpu_group,
                                          lambda: resume.resume_point(run_dir, plan["recipe"], state.num_processes))
    state.wait_for_everyone()  # no process writes before every process has checked
    if resume_from is not None and (run_dir / "plan.json").is_file():  # a resumed run keeps its first decisions
        earlier = json.loads((run_dir / "plan.json").read_text())
        fast.check_same_decisions(plan, earlier)
        problems = adapter_runs.changed_adapter(earlier["model"].get("adapter_run"))  # and its start model
        if problems:
            raise RecipeError(problems)
    diskspace.warn_if_short_of_space(plan, show=state.is_main_process)

    seed = plan["recipe"]["training"]["seed"]
    plan, splits, config_updates = session.load_data(plan)
    tokenizer = models.load_tokenizer(plan["model"])
    session.check_tokenizer(plan, splits, tokenizer)
    warnings = session.data_warnings(plan, splits, tokenizer, state.is_main_process)
    keep_base = plan["peft"] is not None and plan["model"]["init"] == "random"
    # a random base to be quantized is kept unquantized: the adapter's true base, and what `merge` merges into
    model = models.load_model(plan["model"], seed, config_updates, quantize=not keep_base)
    base = keep_random_base(model, Path(plan["output_dir"])) if keep_base else None
    if keep_base and plan["model"].get("quantization"):
        model = models.quantize_random(model, plan["model"])
    trainer = session.trainer_for(plan, model, tokenizer, splits, hw)
    distributed.check_engine(plan["topology"], len(hw["gpus"]), trainer.accelerator.distributed_type)
    marker, watcher = resume.checkpoint_callbacks(plan["recipe"], cpu_group)
    trainer.add_callback(marker)
    trainer.add_callback(watcher)
    return Prepared(plan, trainer, state, hw, launch_config(plan, hw), splits, config_updates,
                    session.data_shape(splits), base, resume_from, watcher, warnings)


def train(plan: dict, prepared: Prepared, argv: list[str]) -> dict:
    """Claim-holding part of a run: records, training, final records; the claim is released however it ends."""
    try:
        return _train(plan, prepared, argv)
    finally:
        prepared.watcher.restore()  # idempotent: training restores them itself, an earlier failure does not
        if prepared.state.is_main_process:
            claim.release(Path(plan["output_dir"]))


def _train(plan: dict, prepared: Prepared, argv: list[str]) -> dict:
    trainer, state = prepared.trainer, prepared.state
    run_dir = Path(plan["output_dir"])
    manifest = first_manifest(plan, prepared, argv)
    results = {"train": None, "before": None, "after": None, "retention": None}
    moved = None
    started = time.monotonic()
    prepared.watcher.watch()  # from here a signal stops the run cleanly (after its first step at the earliest)
    try:
        if state.is_main_process:
            moved = start_records(plan, prepared, manifest)
        state.wait_for_everyone()
        train_and_measure(trainer, plan, prepared, results)
        manifest["status"] = "finished"
        finish(manifest, results, trainer, plan, started, state.is_main_process)
    except resume.RunInterrupted as exc:
        manifest["status"] = "interrupted"
        exc.resume_with = manifest["resume_command"]
        try:
            finish(manifest, results, trainer, plan, started, state.is_main_process)
        except outputs.RecordsNotWritten as err:
            print(exc, file=sys.stderr)  # the checkpoint is whole: how to continue it matters most
            raise err from None
        finally:
            # every rank stopped at the same step; none exits (non-zero) before rank 0 has written the records, or
            # the launcher would kill rank 0 on the first rank's exit
            state.wait_for_everyone()
        if moved is not None:
            print(f"the earlier run in {run_dir} is kept in {moved} until this one finishes", file=sys.stderr)
        raise
    except outputs.RecordsNotWritten:
        raise  # run.json already says failed, and why (finish wrote what it could)
    except BaseException as exc:
        record_failure(manifest, exc, run_dir)
        if moved is not None:
            print(f"the earlier run in {run_dir} was kept at {moved}", file=sys.stderr)
        # records that cannot be written either are reported with this error, which is the cause
        finish(manifest, results, trainer, plan, started, state.is_main_process and run_dir.is_dir())
        raise
    if state.is_main_process:
        outputs.finish_replacing(run_dir)
        print(summary.summary(manifest), flush=True)
    state.wait_for_everyone()
    compat.end_process_group(state)
    return manifest


def first_manifest(plan: dict, prepared: Prepared, argv: list[str]) -> dict:
    """run.json as the run starts: what was loaded and decided, before any step."""
    trainer = prepared.trainer
    manifest = outputs.new_manifest(plan, prepared.hardware, argv)
    manifest.update(parameters=models.count_parameters(trainer.model), examples=count_examples(prepared.splits),
                    weights_dtype=str(trainer.model.dtype).removeprefix("torch."),  # as loaded (GGUF: dequantized)
                    trainer_config=prepared.trainer_config, runner_settings=plan["trainer"]["runner_settings"],
                    config_updates=prepared.config_updates, data_shape=prepared.data_shape,
                    data_warnings=prepared.data_warnings, resumed_from=resumed_from(prepared.resume_from),
                    # rows the trainer holds after TRL's preparation: examples it dropped are gone (packed: rows)
                    trainer_rows={"train": _rows(trainer.train_dataset), "eval": _rows(trainer.eval_dataset)},
                    # what the trainer's accelerator really runs ("bf16" autocast, "fp16" or "no"), beside the
                    # decision and its reason in plan.json (fast_defaults) and the CPU flag in hardware.cpu_bf16
                    mixed_precision=str(trainer.accelerator.mixed_precision),
                    trainer=library_name(type(trainer)))  # the class that trained (a record, never looked up)
    return manifest


def start_records(plan: dict, prepared: Prepared, manifest: dict) -> Path | None:
    """Main process: the run directory (an earlier run moved aside, kept until this one finishes: returned), the
    random base an adapter needs, recipe.json, plan.json and run.json saying `running`."""
    run_dir = Path(plan["output_dir"])
    moved = None if prepared.resume_from else outputs.start_run_dir(plan["output_dir"])
    if plan["trainer"]["config"].get("log_completions"):
        # TRL's log_completions writes completions/<table>.parquet (evaluations before training too) into the
        # folder it made when the trainer was built, which start_run_dir has just moved aside with an earlier run
        (run_dir / "completions").mkdir(exist_ok=True)
    if prepared.random_base is not None:
        save_random_base(prepared.random_base, prepared.trainer.processing_class, run_dir / BASE_MODEL_DIR)
    outputs.write_json(run_dir / "recipe.json", plan["recipe"])
    outputs.write_json(run_dir / "plan.json", plan)
    outputs.write_manifest(run_dir, manifest)
    return moved


def record_failure(manifest: dict, exc: BaseException, run_dir: Path) -> None:
    """run.json's status and error for a run that stopped on an exception (Ctrl-C outside the training loop, where
    measuring or writing records: interrupted)."""
    if isinstance(exc, KeyboardInterrupt):
        saved = (run_dir / "config.json").is_file() or (run_dir / "adapter_config.json").is_file()
        manifest.update(status="interrupted", error="Ctrl-C outside the training loop" + (
            f"; the trained model was already saved in {run_dir}" if saved else ""))
        print(f"interrupted: {manifest['error']}", file=sys.stderr)
    else:
        manifest.update(status="failed", error=f"{type(exc).__name__}: {exc}")


def _rows(dataset) -> int | None:
    try:
        return len(dataset)
    except TypeError:  # None, or a streamed dataset
        return None


def resumed_from(checkpoint: Path | None) -> dict | None:
    if checkpoint is None:
        return None
    return {"checkpoint": checkpoint.name, "step": int(checkpoint.name.removeprefix("checkpoint-"))}


def finish(manifest: dict, results: dict, trainer, plan: dict, started: float, write: bool) -> None:
    """Complete the records; a failed run keeps whatever it measured, and its report says how far it got.

    A record that cannot be written (disk full, the filesystem gone read-only) does not stop the others; run.json
    comes last and then says `failed` with what was not written, and RecordsNotWritten is raised."""
    manifest.update(finished_at=outputs.now(), seconds=round(time.monotonic() - started, 2), metrics=results,
                    history=trainer.state.log_history)
    if not write:
        return
    run_dir = Path(plan["output_dir"])
    data_section = plan["recipe"]["data"]  # its format resolved (null: the task's default), as its sources read it
    resolved = {**plan["recipe"], "data": {**data_section, "format": data_format(TASKS[plan["task"]],
                                                                                  data_section["format"])}}
    outputs.readable_like_records(run_dir)  # the model and every checkpoint
    outputs.write_records(run_dir, manifest, {
        "metrics.json": lambda: outputs.write_json(run_dir / "metrics.json", results),
        "report.md": lambda: report.write_report(run_dir, redact(manifest), redact(resolved), redact(results)),
        # after the libraries' own README.md (written at each save): the model card replaces their template
        "README.md": lambda: atomic.write_text(run_dir / "README.md", redact(
            model_card.render_card(manifest, plan, resolved, results,
                                   TASK_CODE[plan["task"]].model_class().__name__))),
    })


def train_and_measure(trainer, plan: dict, prepared: Prepared, results: dict) -> None:
    """Measure before (baseline, retention), train, save, measure after: filling `results` (metrics.json).

    The model is saved as soon as training ends, so a failure while measuring never costs the training.
    A resumed run keeps the before-training measurements of the run it continues.
    """
    splits, resume_from = prepared.splits, prepared.resume_from
    early = measure_before(trainer, plan, prepared, results)
    try:
        with out_of_memory_as_advice(lambda: trainer.state.global_step):
            results["train"] = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None).metrics
    finally:
        prepared.watcher.restore()  # also when training raised: a later Ctrl-C must not be swallowed
    if prepared.watcher.received and trainer.state.global_step < trainer.state.max_steps:
        # (a signal after the last step changes nothing: the run completes and saves as usual)
        checkpoint = checkpoints.latest_complete_checkpoint(Path(plan["output_dir"]))
        raise resume.RunInterrupted(prepared.watcher.received, checkpoint)
    stop_if_diverged(trainer, plan)
    trainer.save_model(plan["output_dir"])
    before, retention_before = results["before"], early.get("retention")
    if before and "loss" in before and not early.get("in_train"):
        # train() starts a fresh log; keep the baseline as its step-0 point
        trainer.state.log_history.insert(0, {"eval_loss": before["loss"], "step": 0, "epoch": 0.0})
    results["after"] = evaluation.measure(trainer, plan, splits)
    if retention_before is not None:
        results["retention"] = {"before": retention_before, "after": evaluation.measure_retention(trainer, splits)}


def measure_before(trainer, plan: dict, prepared: Prepared, results: dict) -> dict:
    """The before-training measurements (results["before"]); returns the retention baseline.

    A resumed run keeps those of the run it continues. With several processes, DeepSpeed or FSDP they are
    taken inside train(), once the model is wrapped (no step has run yet): an evaluation before train()
    breaks the wrapping (runner/compat.py evaluation_must_wait_for_train).
    """
    if prepared.resume_from is not None:
        earlier = Path(plan["output_dir"]) / "metrics.json"
        previous = json.loads(earlier.read_text()) if earlier.is_file() else {}
        results["before"] = previous.get("before")
        return {"retention": (previous.get("retention") or {}).get("before")}
    early: dict = {}
    if compat.evaluation_must_wait_for_train(trainer):
        trainer.add_callback(evaluation.measure_at_train_start(trainer, plan, prepared.splits, results, early))
        return early
    results["before"] = evaluation.measure(trainer, plan, prepared.splits) if plan["evaluation"]["baseline"] else None
    early["retention"] = evaluation.measure_retention(trainer, prepared.splits)
    return early


def count_examples(splits: data.Splits) -> dict:
    """Rows per split; a mixture's rows per source too (`train_sources`: what each gave the training rows)."""
    names = ("train", "eval", "evaluation", "retention")
    counts = {name: _rows(getattr(splits, name)) for name in names if getattr(splits, name) is not None}
    if splits.drawn is not None:
        counts["train_sources"] = dict(splits.drawn)
    if splits.eval_ranges is not None:
        counts["eval_sources"] = {name: end - start for name, (start, end) in splits.eval_ranges.items()}
    return counts
