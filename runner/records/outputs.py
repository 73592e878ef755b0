"""The run directory: refusing to clobber, atomic records, the run.json manifest.

Only the main process calls the writing functions. Records are written to a temporary file and
renamed into place, so a crash never leaves a half-written run.json.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from runner.records import atomic
from runner.records.claim import CLAIM
from runner.records.invocation import resume_command
from runner.errors import Problem, RecipeError
from runner.records.secrets import redact

MANIFEST = "run.json"
REPLACED = ".replaced-"  # an earlier run being replaced, kept until the new one succeeds
LIBRARIES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "tokenizers", "jsonschema")


RUNNER = "recipe-runner"  # run.json's "runner": what tells a run directory of ours from another tool's
# Everything a run of the runner writes at the top of its run directory, the libraries' files included (TRL writes
# README.md at every checkpoint; `eval` adds eval-*.json; resume renames damaged checkpoints; a kill can leave a
# record's temporary file). Only these are replaced by --overwrite; anything else there is the user's, and the
# directory is refused.
RUN_ENTRIES = re.compile("|".join((
    r"run\.json|recipe\.json|plan\.json|metrics\.json|report\.md|loss_curves\.png|README\.md|eval-[0-9T]+\.json",
    r"(model|adapter_model)(-\d+-of-\d+)?\.safetensors(\.index\.json)?|pytorch_model\.bin|training_args\.bin",
    r"config\.json|generation_config\.json|adapter_config\.json|chat_template\.(jinja|json)",
    r"tokenizer(_config)?\.json|tokenizer\.model|special_tokens_map\.json|added_tokens\.json|vocab\.(json|txt)",
    r"merges\.txt|spiece\.model|sentencepiece\.bpe\.model|preprocessor_config\.json",
    r"(damaged-)?checkpoint-\d+(\.\d+)?|runs|completions|base_model|\.replaced-\d+|\..+\.tmp|\.runner-claim.*",
)))


def check_run_dir(output_dir: str, if_exists: str) -> None:
    """Raise before anything is loaded if starting here would destroy something."""
    path = Path(output_dir)
    check_output_path(path)
    if not path.is_dir() or not entries(path):
        return
    foreign = foreign_entries(path)
    if foreign:
        raise RecipeError([Problem("/output/dir", f"{path} holds {', '.join(foreign[:5])}"
                                                  f"{', ...' if len(foreign) > 5 else ''}, which the runner did not "
                                                  "write; refusing to use a directory that holds other files",
                                   "choose another output.dir (the runner never overwrites or resumes in a "
                                   "directory it cannot prove is its own run)")])
    if if_exists == "error":
        raise RecipeError([Problem("/output/dir", f"{path} already holds a run",
                                   "choose another output.dir, pass --overwrite to replace the earlier run, or "
                                   "--resume to continue it from its newest checkpoint")])


def check_output_path(path: Path) -> None:
    """The run directory can be made: nothing on its path is a file, and the name is one the filesystem takes."""
    try:
        blocker = next((p for p in (path, *path.parents) if p.exists()), None)
    except OSError as exc:  # e.g. a name longer than 255 bytes
        raise RecipeError([Problem("/output/dir", f"{str(path)[:200]} is not a usable path: {exc.strerror}",
                                   "choose a shorter output.dir")]) from None
    if blocker is not None and not blocker.is_dir():
        where = "" if blocker == path else f", so {path} cannot be created below it"
        raise RecipeError([Problem("/output/dir", f"{blocker} is a file, not a directory{where}",
                                   "choose another output.dir")])


def entries(path: Path) -> list[str]:
    """What a run directory holds, the ownership claim left out."""
    return sorted(p.name for p in path.iterdir() if not p.name.startswith(CLAIM))


def read_manifest(path: Path) -> dict | None:
    """run.json of a run directory when the runner wrote it (its schema and runner identity), else None."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or not MANIFEST_KEYS <= manifest.keys():
        return None
    if manifest.get("runner") != RUNNER and not (isinstance(manifest["versions"], dict)
                                                 and RUNNER in manifest["versions"]):
        return None  # runs from before the identity key carry the runner's version instead
    return manifest


# inside a checkpoint (besides the model files of RUN_ENTRIES): trainer state, DeepSpeed's shards, the marker
CHECKPOINT_FILES = re.compile(r"optimizer\.pt|scheduler\.pt|scaler\.pt|rng_state(_\d+)?\.pth|trainer_state\.json|"
                              r"runner_checkpoint\.json|latest|zero_to_fp32\.py|global_step\d+/.+|\..+\.tmp")


def foreign_entries(path: Path) -> list[str]:
    """Entries of `path` that no run of the runner wrote (all of them when run.json is not the runner's), looking
    inside the folders a run makes too: a note left in a checkpoint is the user's as much as one beside it."""
    if read_manifest(path) is None:
        return entries(path)
    found = []
    for name in entries(path):
        if not RUN_ENTRIES.fullmatch(name):
            found.append(name)
        elif (path / name).is_dir():
            found += [f"{name}/{inner}" for inner in _foreign_inside(path / name)]
    return found


def _foreign_inside(folder: Path) -> list[str]:
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if not p.is_dir())
    if folder.name == "runs":  # TensorBoard's event files, in one folder per run
        return [f for f in files if not Path(f).name.startswith("events.out.tfevents.")]
    if folder.name == "completions":  # TRL's log_completions (GRPO, RLOO): a table per logging step
        return [f for f in files if not re.fullmatch(r"completions_\d+\.parquet", f)]
    if folder.name.startswith(REPLACED):  # an earlier run being replaced: judged as a run directory
        return [] if read_manifest(folder) is None else foreign_entries(folder)
    if folder.name == "base_model":
        return [f for f in files if not RUN_ENTRIES.fullmatch(f)]
    listed = _checkpoint_files(folder)
    return [f for f in files if not (f in listed or CHECKPOINT_FILES.fullmatch(f) or RUN_ENTRIES.fullmatch(f))]


def _checkpoint_files(folder: Path) -> set[str]:
    """The files a checkpoint's completeness marker lists (runner/records/checkpoints.py)."""
    from runner.records.checkpoints import read_marker

    marker, _ = read_marker(folder)
    return set((marker or {}).get("files") or ())


def start_run_dir(output_dir: str) -> Path | None:
    """Create the run directory. An earlier run there is moved into a hidden folder inside it and deleted
    only once this run succeeds; nothing is written outside the run directory."""
    path = Path(output_dir)
    path.mkdir(parents=True, exist_ok=True)
    foreign = [name for name in foreign_entries(path) if not _made_by_the_trainer(path / name)]
    if foreign:  # a file put there since check_run_dir looked, while the model loaded
        raise RecipeError([Problem("/output/dir", f"{path} now holds {', '.join(foreign[:5])}, which the runner "
                                                  "did not write; nothing was moved or replaced",
                                   "choose another output.dir")])
    earlier = [path / name for name in entries(path) if not name.startswith(REPLACED)]
    if not earlier:
        return None
    moved = path / f"{REPLACED}{int(time.time() * 1000)}"
    moved.mkdir()
    for entry in earlier:
        entry.rename(moved / entry.name)
    return moved


def _made_by_the_trainer(entry: Path) -> bool:
    """TRL's log_completions makes an empty completions/ folder when the trainer is built, before the run directory
    is started (runner/commands/run.py start_records makes it again in the run's own directory)."""
    return entry.name == "completions" and entry.is_dir() and not any(entry.iterdir())


def finish_replacing(run_dir: Path) -> None:
    """The run finished: earlier runs it replaced (an interrupted overwrite's too) can go."""
    for moved in run_dir.glob(f"{REPLACED}*"):
        shutil.rmtree(moved, ignore_errors=True)


def write_json(path: Path, obj) -> None:
    """Write JSON atomically (runner/records/atomic.py), secrets masked."""
    atomic.write_json_file(path, redact(obj))


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def versions() -> dict:
    found = {"python": sys.version.split()[0]}
    for name in ("recipe-runner",) + LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


MANIFEST_KEYS = {"name", "status", "started_at", "command", "recipe_file", "output_dir", "versions"}


def new_manifest(plan: dict, hw: dict, argv: list[str]) -> dict:
    return {
        "runner": RUNNER,
        "name": plan["recipe"]["name"],
        "status": "running",
        "started_at": now(),
        "finished_at": None,
        "command": argv,
        "cwd": os.getcwd(),  # relative paths in the command (and in --set values) are relative to it
        "resume_command": resume_command(argv, os.getcwd(), hw.get("world_size", 1), plan["recipe_file"]),
        "recipe_file": plan["recipe_file"],
        "output_dir": plan["output_dir"],
        "versions": versions(),
        "hardware": hw,
        "parameters": None,
        "metrics": {},
        "history": [],
    }


class RecordsNotWritten(RecipeError):
    """Some of a run's final records could not be written (disk full, filesystem gone read-only)."""


BRIEF_KEYS = ("runner", "name", "status", "error", "started_at", "finished_at", "command", "cwd", "resume_command",
              "recipe_file", "output_dir", "versions", "resumed_from")


def write_manifest(run_dir: Path, manifest: dict) -> None:
    """run.json, atomically. When there is no room for the new file, the run.json written at the start is
    overwritten in place by the status alone, padded to its old length with spaces (valid JSON at every moment
    of the write, no truncation): on most filesystems that needs no new blocks, and run.json does not keep saying
    `running` for a process that has gone. A read-only filesystem allows neither; the error raised says so."""
    try:
        write_json(run_dir / MANIFEST, manifest)
    except OSError:
        brief = json.dumps(redact({key: manifest.get(key) for key in BRIEF_KEYS}), default=str)
        try:
            with open(run_dir / MANIFEST, "r+") as handle:
                size = os.fstat(handle.fileno()).st_size
                if len(brief.encode()) <= size:
                    handle.write(brief.ljust(size))  # ASCII: characters are bytes
        except OSError:
            pass
        raise


def write_records(run_dir: Path, manifest: dict, writers: dict) -> None:
    """Write each record (name -> function); failures do not stop the others. run.json last, marked failed when
    a record is missing; then RecordsNotWritten names what is missing and what is safe."""
    missing, broken = [], []
    for name, write in writers.items():
        try:
            write()
        except OSError as exc:
            missing.append(f"{name} ({exc.strerror or exc})")
        except Exception as exc:  # noqa: BLE001 - a report that cannot be rendered never costs the run's model
            broken.append(f"{name} ({type(exc).__name__}: {exc})")
    if broken:  # the runner's fault, not the disk's: said, and the run keeps its status
        print(f"warning: could not render {', '.join(broken)}: a bug in the runner (please report it); the model "
              f"and the other records in {run_dir} are complete", file=sys.stderr)
        manifest["records_not_rendered"] = broken
    if missing:
        manifest.update(status="failed", error=f"could not write {', '.join(missing)}"
                                               + (f" after: {manifest['error']}" if manifest.get("error") else ""))
    try:
        write_manifest(run_dir, manifest)
    except OSError as exc:
        missing.append(f"{MANIFEST} ({exc.strerror or exc}; reduced to the status alone where possible)")
    if missing:
        saved = "the trained model is saved there; " if (run_dir / "config.json").is_file() else ""
        cause = f" (the run had failed first: {manifest['error']})" if " after: " in manifest.get("error", "") else ""
        raise RecordsNotWritten([Problem("/output/dir", f"could not write {', '.join(missing)} in {run_dir}{cause}",
                                         f"{saved}free space or write permission on that filesystem "
                                         f"(df -h {run_dir}) before running again")])


def readable_like_records(run_dir: Path) -> None:
    """Give saved weights the mode the records have (the umask applied): safetensors' writer creates its files
    0600 whatever the umask, which a cluster group sharing the run directory cannot read."""
    mode = 0o666 & ~atomic.umask()
    for path in run_dir.rglob("*.safetensors"):
        if path.is_file() and (path.stat().st_mode & 0o777) == 0o600 != mode:
            path.chmod(mode)
