"""Interruption and resume: checkpoints that are whole or skipped, and the recipe they belong to.

A checkpoint counts only once `runner_checkpoint.json` (the marker) is in it: the runner writes that
file after transformers has written everything else, and it lists every file of the checkpoint with
its size and sha256. `--resume` verifies the newest checkpoint against its marker; one cut short by a
crash, or damaged since (a file missing, truncated or changed), is reported and skipped for the next
newest whole one, and never deleted or changed. The marker also carries the resolved recipe and
library versions; resuming with a recipe that differs in anything but the fields in MAY_CHANGE is
refused with the differing fields listed.
"""
from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

from runner.errors import Problem, RecipeError
from runner.recipe.sources import SPLITS, split_sources
from runner.records.outputs import MANIFEST
from runner.records.checkpoints import checkpoints, progress, read_marker, unverified, whole_checkpoint
from runner.records.secrets import redact
from runner.recipe.load import differing_paths

# Recipe fields that may differ on resume: they change what is logged, saved or measured, not the training.
MAY_CHANGE = (
    "/description", "/output", "/evaluation", "/data/tokenization_cache",
    "/training/logging_steps", "/training/logging_strategy", "/training/logging_first_step",
    "/training/eval_strategy", "/training/eval_steps", "/training/eval_on_start",
    "/training/save_strategy", "/training/save_steps", "/training/save_total_limit",
    "/training/dataloader_num_workers", "/training/report_to", "/training/per_device_eval_batch_size",
)


SET_ASIDE = "damaged-"  # a damaged checkpoint the resumed run would write over is renamed to damaged-checkpoint-N


def say(text: str) -> None:
    """A line on stderr, from the main process only (every process verifies the same checkpoints)."""
    if os.environ.get("RANK", "0") == "0":
        print(text, file=sys.stderr, flush=True)


def resume_point(run_dir: Path, recipe: dict, world_size: int = 1) -> Path | None:
    """The checkpoint to continue from; None to start afresh (no checkpoint yet). Raises when resuming would be
    wrong: the run finished, no checkpoint is whole, or the recipe, data or process count changed.

    Called on the main process (it hashes every file of the newest checkpoints); the others take its answer."""
    manifest = run_dir / MANIFEST
    if manifest.is_file() and json.loads(manifest.read_text()).get("status") == "finished":
        raise RecipeError([Problem("/output/if_exists", f"the run in {run_dir} already finished; nothing to resume",
                                   "choose another output.dir, or --overwrite to train it again")])
    if not checkpoints(run_dir):
        return None
    checkpoint, skipped = whole_checkpoint(run_dir)
    if checkpoint is not None:
        for damaged, problems in skipped.items():
            say(f"warning: {damaged} is damaged and skipped: {'; '.join(problems)}. Its files are left as they are.")
    else:
        raise RecipeError([Problem("/output/if_exists", f"no whole checkpoint in {run_dir} to resume from: "
                                   + "; ".join(f"{c.name}: {', '.join(p)}" for c, p in skipped.items()),
                                   "--overwrite to start over (the damaged checkpoints go with the earlier run once "
                                   "the new one finishes: copy any you want to keep first), or choose another "
                                   "output.dir")])
    marker, _ = read_marker(checkpoint)
    problems = [Problem(path, f"differs from the recipe {checkpoint.name} was trained with",
                        "resume with the same settings, or --overwrite to start over")
                for path in differing_paths(marker["recipe"], redact(recipe), MAY_CHANGE)]  # the marker holds it masked
    problems += [Problem(f"/data/{split}/path", f"{path} changed since {checkpoint.name} was saved (size or "
                                                "modification time): resuming would skip the wrong rows",
                         "restore the file, or --overwrite to start over")
                 for split, path in changed_files(marker.get("data_files", {}), recipe)]
    problems += changed_world_size(checkpoint, marker.get("world_size", 1), world_size)
    if problems:
        raise RecipeError(problems)
    if unverified(checkpoint):
        say(f"warning: {checkpoint} was saved by an earlier runner that did not record its files; "
            "resuming from it unverified")
    say(f"resuming from {checkpoint.name} ({progress(marker, checkpoint)})")
    return checkpoint


def set_aside_newer(run_dir: Path, step: int) -> None:
    """Rename the checkpoints newer than the one a run resumed from (all damaged: resume took the newest whole
    one) to damaged-checkpoint-N, before the resumed run reaches step N and writes its new checkpoint-N into
    the same folder. Only the folder's name changes: the files stay byte for byte as they were."""
    for checkpoint in checkpoints(run_dir):
        if int(checkpoint.name[11:]) <= step:
            continue
        target, n = run_dir / f"{SET_ASIDE}{checkpoint.name}", 0
        while target.exists():  # damaged again on a later resume: keep both
            n += 1
            target = run_dir / f"{SET_ASIDE}{checkpoint.name}.{n}"
        checkpoint.rename(target)
        say(f"{checkpoint.name} (damaged) renamed to {target.name}, so that the resumed run does not write over "
            "it; its files are unchanged")


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
    """Size and modification time of the local training files (and code rewards), to notice them changing under a
    run."""
    found = {}
    for split in SPLITS:
        for where, source in split_sources(recipe["data"], split):
            if "path" in source and Path(source["path"]).is_file():
                stat = Path(source["path"]).stat()
                # "train", "eval", or "train/0" for a mixture's first source
                found[where.removeprefix("/data/")] = {"path": source["path"], "size": stat.st_size,
                                                       "mtime_ns": stat.st_mtime_ns}
    for index, reward in enumerate(recipe.get("rewards") or []):  # code that scores the completions (grpo, rloo)
        if reward["type"] == "python" and Path(reward["file"]).is_file():
            stat = Path(reward["file"]).stat()
            found[f"rewards/{index}"] = {"path": reward["file"], "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return found


def changed_files(saved: dict, recipe: dict) -> list[tuple[str, str]]:
    now = redact(data_files(recipe))  # the marker holds them masked, like everything the runner writes
    return [(split, before["path"]) for split, before in saved.items() if now.get(split) != before]


def checkpoint_callbacks(recipe: dict, cpu_group=None):
    """The callbacks that make checkpoints resumable and interruptions clean (runner/train/callbacks.py).

    `cpu_group`: the gloo group the rank agreement made (runner/launch/ranks.py); None for one process."""
    from runner.train.callbacks import MarkComplete, StopOnSignal

    return MarkComplete(recipe), StopOnSignal(cpu_group)


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
