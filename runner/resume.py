"""Interruption and resume: checkpoints that say they are complete, and the recipe they belong to.

A checkpoint counts only once `runner_checkpoint.json` is in it: the runner writes that file
after transformers has written everything else, so a checkpoint cut short by a crash is skipped.
The file carries the resolved recipe and library versions; resuming with a recipe that differs
in anything but the fields in MAY_CHANGE is refused with the differing fields listed.
"""
from __future__ import annotations

import json
import signal
from pathlib import Path

from .errors import Problem, RecipeError
from .outputs import MANIFEST, versions, write_json
from .secrets import redact

COMPLETE = "runner_checkpoint.json"
# Recipe fields that may differ on resume: they change what is logged, saved or measured, not the training.
MAY_CHANGE = (
    "/description", "/output", "/evaluation", "/data/tokenization_cache",
    "/training/logging_steps", "/training/logging_strategy", "/training/logging_first_step",
    "/training/eval_strategy", "/training/eval_steps", "/training/eval_on_start",
    "/training/save_strategy", "/training/save_steps", "/training/save_total_limit",
    "/training/dataloader_num_workers", "/training/report_to", "/training/per_device_eval_batch_size",
)


def latest_complete_checkpoint(run_dir: Path) -> Path | None:
    found = [p for p in run_dir.glob("checkpoint-*") if (p / COMPLETE).is_file() and p.name[11:].isdigit()]
    return max(found, key=lambda p: int(p.name[11:])) if found else None


def resume_point(run_dir: Path, recipe: dict, world_size: int = 1) -> Path | None:
    """The checkpoint to continue from; None to start afresh. Raises when resuming would be wrong."""
    manifest = run_dir / MANIFEST
    if manifest.is_file() and json.loads(manifest.read_text()).get("status") == "finished":
        raise RecipeError([Problem("/output/if_exists", f"the run in {run_dir} already finished; nothing to resume",
                                   "choose another output.dir, or --overwrite to train it again")])
    checkpoint = latest_complete_checkpoint(run_dir)
    if checkpoint is None:
        return None
    marker = json.loads((checkpoint / COMPLETE).read_text())
    problems = [Problem(path, f"differs from the recipe {checkpoint.name} was trained with",
                        "resume with the same settings, or --overwrite to start over")
                for path in differing_fields(marker["recipe"], redact(recipe))]  # the marker holds it masked
    problems += [Problem(f"/data/{split}/path", f"{path} changed since {checkpoint.name} was saved (size or "
                                                "modification time): resuming would skip the wrong rows",
                         "restore the file, or --overwrite to start over")
                 for split, path in changed_files(marker.get("data_files", {}), recipe)]
    problems += changed_world_size(checkpoint, marker.get("world_size", 1), world_size)
    if problems:
        raise RecipeError(problems)
    return checkpoint


def changed_world_size(checkpoint: Path, saved: int, now: int) -> list[Problem]:
    """Refuse to resume on another number of processes.

    transformers resumes by skipping the batches each process already took, and restores one RNG
    state per rank; with another process count the skipped batches are other examples (some seen
    twice, some never) and the global batch changes; DeepSpeed's sharded optimizer states are laid
    out per rank. None of this fails loudly, so the runner refuses.
    """
    if saved == now:
        return []
    return [Problem("/output/if_exists", f"{checkpoint.name} was saved by a run with {saved} process(es); this "
                                         f"launch has {now}: resuming would skip the wrong examples, change the "
                                         "global batch and mismatch the per-rank optimizer and RNG states",
                    f"resume with {saved} process(es) (accelerate launch --num_processes {saved}), or --overwrite "
                    "to start over with the new count")]


def data_files(recipe: dict) -> dict:
    """Size and modification time of the local training files, to notice them changing under a run."""
    found = {}
    for split in ("train", "eval"):
        source = recipe["data"].get(split) or {}
        if "path" in source and Path(source["path"]).is_file():
            stat = Path(source["path"]).stat()
            found[split] = {"path": source["path"], "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return found


def changed_files(saved: dict, recipe: dict) -> list[tuple[str, str]]:
    now = redact(data_files(recipe))  # the marker holds them masked, like everything the runner writes
    return [(split, before["path"]) for split, before in saved.items() if now.get(split) != before]


def differing_fields(old, new, path: str = "") -> list[str]:
    if any(path == allowed or path.startswith(allowed + "/") for allowed in MAY_CHANGE):
        return []
    if isinstance(old, dict) and isinstance(new, dict):
        return [p for key in sorted(old.keys() | new.keys())
                for p in differing_fields(old.get(key), new.get(key), f"{path}/{key}")]
    return [] if old == new else [path]


def checkpoint_callbacks(recipe: dict, cpu_group=None):
    """The callbacks that make checkpoints resumable and interruptions clean.

    `cpu_group`: the gloo group the rank preflight made (None for one process), for agreeing on signals."""
    from transformers import TrainerCallback

    class MarkComplete(TrainerCallback):
        """Write the completeness marker last, with what the checkpoint was trained from."""

        def on_save(self, args, state, control, model=None, **kwargs):
            from accelerate import PartialState

            PartialState().wait_for_everyone()  # every process has written its part (its RNG state)
            if not state.is_world_process_zero or not all_finite(model):
                return  # a checkpoint of diverged weights is never offered for resuming
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            write_json(folder / COMPLETE, {"recipe": recipe, "versions": versions(), "step": state.global_step,
                                           "data_files": data_files(recipe), "world_size": args.world_size})

    class StopOnSignal(TrainerCallback):
        """SIGINT/SIGTERM: finish the current step, save a checkpoint, stop. A second signal stops at once.

        With several processes every rank must stop at the same step, so the flag is combined across ranks:
        a non-blocking all_reduce on a CPU (gloo) group, started at the end of each step and read at the end
        of the next. A blocking all_reduce and `.item()` every step would stall each GPU step on the host;
        this costs one step of delay instead."""

        def __init__(self):
            self.received: str | None = None
            self.previous = {}
            self.agreement = None

        def on_train_begin(self, args, state, control, **kwargs):
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._note)
            self.agreement = None if cpu_group is None else RankAgreement(cpu_group)

        def _note(self, signum, frame):
            self.received = signal.Signals(signum).name
            for sig, handler in self.previous.items():
                signal.signal(sig, handler)  # a second signal is not caught again

        def on_step_end(self, args, state, control, **kwargs):
            anywhere = self.received is not None if self.agreement is None else \
                self.agreement.any_so_far(self.received is not None)
            if anywhere:
                self.received = self.received or "SIGTERM"  # another process got it
                control.should_save = True
                control.should_training_stop = True

        def on_train_end(self, args, state, control, **kwargs):
            # One last, blocking agreement: a signal in the final step(s) (or while another rule stopped training)
            # is then known to every rank alike, so all ranks leave train() by the same path.
            if self.agreement is not None and self.agreement.finish(self.received is not None):
                self.received = self.received or "SIGTERM"

        def restore(self):
            for sig, handler in self.previous.items():
                signal.signal(sig, handler)
            self.previous = {}
            if self.agreement is not None:  # also when training raised and on_train_end never ran
                self.agreement.close()
                self.agreement = None

    return MarkComplete(), StopOnSignal()


def all_finite(model) -> bool:
    import torch

    return model is None or all(bool(torch.isfinite(p).all()) for p in model.parameters())


class RankAgreement:
    """Whether a flag was raised on any rank, learnt one step late without blocking on the GPU.

    Each call combines the flag with a MAX all_reduce on a gloo (CPU) group, asynchronously, and returns the
    result of the previous call's all_reduce: every rank gets the same answer at the same call.
    """

    def __init__(self, group):
        self.group, self.pending = group, None

    def any_so_far(self, flag: bool) -> bool:
        import torch
        import torch.distributed as dist

        earlier = self._wait()
        value = torch.tensor([1 if flag else 0])
        self.pending = (dist.all_reduce(value, op=dist.ReduceOp.MAX, group=self.group, async_op=True), value)
        return earlier

    def _wait(self) -> bool:
        if self.pending is None:
            return False
        work, value = self.pending
        work.wait()
        self.pending = None
        return bool(value.item())

    def finish(self, flag: bool) -> bool:
        """The flag on any rank, up to now: the pending result, then this last all_reduce waited for."""
        earlier = self.any_so_far(flag)
        return self._wait() or earlier

    def close(self) -> None:
        """Release the group; an all_reduce still in flight (training raised) is abandoned, not waited for."""
        import torch.distributed as dist

        self.pending = None
        try:
            dist.destroy_process_group(self.group)
        except (RuntimeError, ValueError):  # the default group may already be gone
            pass


class RunInterrupted(Exception):
    """The run stopped on a signal after saving a checkpoint; the CLI exits 128 + the signal number.

    `resume_with`: the command line that continues the run (run.json's resume_command), set once it is known."""

    def __init__(self, signal_name: str, checkpoint: Path | None, resume_with: str | None = None):
        self.code = 128 + signal.Signals[signal_name].value
        self.signal_name, self.checkpoint, self.resume_with = signal_name, checkpoint, resume_with
        super().__init__(signal_name)

    def __str__(self) -> str:
        where = f"checkpoint saved at {self.checkpoint}" if self.checkpoint else "no checkpoint could be saved"
        return f"interrupted by {self.signal_name}: {where}.\nresume with: {self.resume_with}"
