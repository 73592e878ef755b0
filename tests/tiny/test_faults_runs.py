"""Fault harness, runs and run directories: what a careless user does with the command line, and what the
machine does to a run (full, read-only filesystems; a crash), each asserting the exit code, no traceback, a
message that names the path and the fix, and that nothing the user had changed (byte for byte).

Filesystem cases mount a tmpfs or a read-only bind mount; they need root and skip with the reason elsewhere.
"""
from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import stat
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from assets import reverse_rows
from conftest import base_recipe, write_json, write_jsonl
from faults import ROOT, Snapshot, assert_user_error, cli

ROWS = [{"text": f"{r['prompt']}{r['completion']}"} for r in reverse_rows(64, seed=3)]


def recipe_in(tmp_path: Path, name: str = "recipe.json", **sections) -> Path:
    write_jsonl(tmp_path / "train.jsonl", ROWS)
    return write_json(tmp_path / name, base_recipe(tmp_path, **sections))


def long_run(tmp_path: Path, out: Path, *extra: str, steps: int = 5000) -> subprocess.Popen:
    """A run of many quick steps that saves a checkpoint every 20 steps, in the background."""
    training = {"max_steps": steps, "save_strategy": "steps", "save_steps": 20, "logging_steps": 1000}
    recipe = recipe_in(tmp_path, "long.json", training=training)
    return subprocess.Popen([sys.executable, "-m", "runner", str(recipe), "--set", f"output.dir={out}", *extra],
                            cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(condition, what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def stop(process: subprocess.Popen) -> tuple[str, str]:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    return process.communicate(timeout=120)


# --- run identity: the printed resume command continues the same run -------------------------------------------


def as_printed(hint: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run a printed command line through the shell, as a user pastes it."""
    return subprocess.run(hint, shell=True, cwd=cwd,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=600)


def test_the_printed_resume_command_keeps_every_override_and_continues_the_same_run(tmp_path):
    out = tmp_path / "elsewhere" / "run-b"
    process = long_run(tmp_path, out, "--set", "training.seed=7", steps=120)
    wait_for(lambda: (out / "checkpoint-20" / "runner_checkpoint.json").is_file(), "the first checkpoint")
    _, stderr = stop(process)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    hint = stderr.split("resume with: ", 1)[1].strip().splitlines()[0]
    assert f"--set output.dir={out}" in hint and "--set training.seed=7" in hint and hint.endswith("--resume"), hint
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["status"] == "interrupted" and manifest["resume_command"] == hint
    saved = max(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))

    resumed = as_printed(hint, cwd=tmp_path)  # from another directory than the one it started in
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["status"] == "finished" and manifest["resumed_from"] == {"checkpoint": f"checkpoint-{saved}",
                                                                             "step": saved}
    assert json.loads((out / "recipe.json").read_text())["training"]["seed"] == 7
    assert not (tmp_path / "run").exists(), "nothing trained in the recipe's default output.dir"


def test_run_json_records_the_command_and_a_finished_runs_resume_command_is_refused(tmp_path):
    out = tmp_path / "run-c"
    recipe = recipe_in(tmp_path, training={"max_steps": 2})
    first = cli("run", recipe, "--set", f"output.dir={out}", "--set", "training.seed=5", "--overwrite")
    assert first.code == 0, first
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["command"][1:] == ["run", str(recipe), "--set", f"output.dir={out}", "--set", "training.seed=5",
                                       "--overwrite"]
    assert manifest["cwd"] == str(ROOT)
    assert manifest["resume_command"] == f"cd {shlex.quote(str(ROOT))} && " + shlex.join(
        [sys.executable, "-m", "runner", str(recipe), "--set", f"output.dir={out}", "--set", "training.seed=5",
         "--resume"])
    resumed = as_printed(manifest["resume_command"], cwd=tmp_path)
    assert resumed.returncode == 2 and "already finished" in resumed.stderr and "Traceback" not in resumed.stderr


def test_the_resume_command_of_a_run_with_the_default_output_dir_works_from_anywhere(tmp_path):
    """No --set: output.dir defaults to runs/<name> in the directory the run started in."""
    recipe = write_json(tmp_path / "r.json", {**base_recipe(tmp_path, training={"max_steps": 2}), "output": {}})
    write_jsonl(tmp_path / "train.jsonl", ROWS)
    started_in = tmp_path / "project"
    started_in.mkdir()
    assert cli(recipe, cwd=started_in).code == 0
    manifest = json.loads((started_in / "runs" / "t" / "run.json").read_text())
    resumed = as_printed(manifest["resume_command"], cwd=tmp_path)
    assert resumed.returncode == 2 and "already finished" in resumed.stderr, resumed.stderr[-2000:]


def test_resume_of_a_directory_with_no_run_is_refused_and_creates_nothing(tmp_path):
    recipe = recipe_in(tmp_path)
    missing = tmp_path / "typo" / "run"
    outcome = cli(recipe, "--set", f"output.dir={missing}", "--resume")
    assert_user_error(outcome, "/output/dir", "no run to continue", str(missing), "does not exist",
                      "resume_command")
    assert not (tmp_path / "typo").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_user_error(cli(recipe, "--set", f"output.dir={empty}", "--resume"), "holds no run.json")
    assert list(empty.iterdir()) == []


# --- one owner per run directory ----------------------------------------------------------------------------------


def test_a_second_run_into_a_directory_in_use_is_refused_and_the_first_finishes_untouched(tmp_path):
    out = tmp_path / "shared-run"
    first = long_run(tmp_path, out, "--set", "training.seed=1", steps=600)
    try:
        wait_for(lambda: (out / "run.json").is_file(), "the first run's records")
        second = cli(tmp_path / "long.json", "--set", f"output.dir={out}", "--set", "training.seed=2",
                     "--set", "training.max_steps=3")
        assert_user_error(second, "in use by another run", f"process {first.pid} on host {socket.gethostname()}")
    finally:
        _, stderr = stop(first)
    assert json.loads((out / "recipe.json").read_text())["training"]["seed"] == 1, "the first run's own records"
    assert json.loads((out / "run.json").read_text())["status"] in ("interrupted", "finished"), stderr[-2000:]
    assert not (out / ".runner-claim").exists(), "the claim is released when the run ends"


def _race_for(run_dir: str, barrier, results) -> None:
    from runner.records.claim import claim
    from runner.errors import RecipeError

    barrier.wait()
    try:
        claim(Path(run_dir))
        results.put("won")
    except RecipeError as err:
        results.put(err.problems[0].message)


@pytest.mark.parametrize("stale", [False, True], ids=["empty-directory", "stale-claim"])
def test_runs_racing_for_one_directory_exactly_one_wins(tmp_path, stale):
    """Eight processes released by one barrier claim the same directory (empty, or holding a dead owner's claim):
    one owns it, the seven others are refused naming the winner."""
    import multiprocessing

    run_dir = tmp_path / "run"
    if stale:
        run_dir.mkdir()
        (run_dir / ".runner-claim").write_text(json.dumps({"host": socket.gethostname(), "pid": 2**22 + 5,
                                                           "nonce": "dead"}))
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(8), context.Queue()
    racers = [context.Process(target=_race_for, args=(str(run_dir), barrier, results)) for _ in range(8)]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join(60)
    outcomes = sorted(results.get(timeout=5) for _ in racers)
    assert outcomes.count("won") == 1, outcomes
    winner = json.loads((run_dir / ".runner-claim").read_text())["pid"]
    assert all(f"in use by another run: process {winner} " in o for o in outcomes if o != "won"), outcomes
    assert [p.name for p in run_dir.iterdir()] == [".runner-claim"], "no stale or staged claim files left"


def test_resume_while_the_owner_still_trains_is_refused_and_touches_nothing(tmp_path):
    out = tmp_path / "busy"
    process = long_run(tmp_path, out)
    try:
        wait_for(lambda: (out / "checkpoint-20" / "runner_checkpoint.json").is_file(), "the first checkpoint")
        owner = json.loads((out / ".runner-claim").read_text())
        assert owner["pid"] == process.pid
        outcome = cli(tmp_path / "long.json", "--set", f"output.dir={out}", "--resume")
        assert_user_error(outcome, "in use by another run", f"process {process.pid}", socket.gethostname(),
                          str(out / ".runner-claim"))
        assert process.poll() is None, "the owner goes on"
    finally:
        stop(process)
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"


@pytest.mark.parametrize("owner,taken_over", [
    ({"host": socket.gethostname(), "pid": 2**22 + 17}, True),  # a pid no process has: the owner crashed
    ({"host": socket.gethostname(), "pid": 1, "pid_started": "0"}, True),  # pid reused since it claimed
    ("{not json", True),  # a damaged claim (claims are written whole, then linked into place)
    ({"host": "node-17.cluster", "pid": 4242, "since": "2026-12-04T10:00:00"}, False),  # cannot be checked here
], ids=["dead-pid", "reused-pid", "damaged", "other-host"])
def test_a_stale_claim_is_taken_over_and_a_live_or_unknown_one_refuses(tmp_path, owner, taken_over):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".runner-claim").write_text(owner if isinstance(owner, str) else json.dumps(owner))
    outcome = cli(recipe_in(tmp_path))
    if taken_over:
        assert outcome.code == 0, outcome
        assert json.loads((out / "run.json").read_text())["status"] == "finished"
        assert not (out / ".runner-claim").exists()
    else:
        assert_user_error(outcome, "in use by another run", "process 4242 on host node-17.cluster",
                          f"delete {out / '.runner-claim'}")
        assert sorted(p.name for p in out.iterdir()) == [".runner-claim"]


# --- --overwrite and foreign directories ---------------------------------------------------------------------------


def foreign_dir(tmp_path: Path) -> Path:
    other = tmp_path / "run"
    other.mkdir()
    (other / "run.json").write_text(json.dumps({"experiment": "baseline", "status": "finished", "seed": 3}))
    (other / "results.csv").write_text("epoch,acc\n1,0.91\n")
    return other


@pytest.mark.parametrize("flag", ["--overwrite", "--resume", None])
def test_a_directory_with_another_tools_run_json_is_never_replaced(tmp_path, flag):
    other = foreign_dir(tmp_path)
    before = Snapshot(other)
    outcome = cli(recipe_in(tmp_path), *([flag] if flag else []))
    assert_user_error(outcome, "/output/dir", "results.csv", "run.json", "which the runner did not write",
                      "choose another output.dir")
    assert "--overwrite" not in outcome.stderr.split("hint:", 1)[1], "no advice that is refused in turn"
    before.assert_unchanged()


def test_overwrite_of_a_run_holding_a_users_file_is_refused(tmp_path):
    recipe = recipe_in(tmp_path)
    assert cli(recipe).code == 0
    (tmp_path / "run" / "notes.txt").write_text("what I learnt from this run")
    before = Snapshot(tmp_path / "run")
    assert_user_error(cli(recipe, "--overwrite"), "notes.txt", "which the runner did not write")
    before.assert_unchanged()
    (tmp_path / "run" / "notes.txt").unlink()
    assert cli(recipe, "--overwrite").code == 0, "its own run alone is replaced"


# --- paths and filesystems -----------------------------------------------------------------------------------------


def test_output_dir_below_a_regular_file(tmp_path):
    (tmp_path / "results").write_text("a file, not a folder")
    before = Snapshot(tmp_path / "results")
    outcome = cli(recipe_in(tmp_path), "--set", f"output.dir={tmp_path / 'results' / 'run'}")
    assert_user_error(outcome, "/output/dir", f"{tmp_path / 'results'} is a file, not a directory")
    before.assert_unchanged()


def mount(*args: str) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount here (needs root): {done.stderr.strip()}")


def umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture
def read_only_dir(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    (folder / "earlier.txt").write_text("kept")
    mount("--bind", str(folder), str(folder))
    try:
        mount("-o", "remount,ro,bind", str(folder))
        yield folder
    finally:
        umount(folder)


def test_read_only_output_filesystem_is_found_before_the_model_loads(tmp_path, read_only_dir):
    before = Snapshot(read_only_dir)
    outcome = cli(recipe_in(tmp_path), "--set", f"output.dir={read_only_dir / 'run'}")
    assert_user_error(outcome, "/output/dir", f"cannot write in {read_only_dir / 'run'}", "Read-only file system",
                      "writable filesystem")
    assert "Loading weights" not in outcome.stderr, "found before the model loads"
    before.assert_unchanged()


@contextmanager
def tmpfs(folder: Path, size: str):
    """A tmpfs of `size` mounted at `folder` (created) for the block's duration."""
    folder.mkdir()
    mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder))
    try:
        yield folder
    finally:
        umount(folder)


@pytest.fixture
def small_filesystem(tmp_path):
    with tmpfs(tmp_path / "small", "256k") as folder:
        yield folder


def test_a_full_disk_is_announced_then_reported_without_a_traceback(tmp_path, small_filesystem):
    """256 KiB cannot hold the tiny model's 2.7 MB: a warning before the model loads, then exit 2 when saving."""
    outcome = cli(recipe_in(tmp_path), "--set", f"output.dir={small_filesystem / 'run'}")
    assert "warning: " in outcome.stderr and "MiB free; this run writes up to about" in outcome.stderr, outcome
    assert_user_error(outcome, "No space left on device", "free space")
    manifest = json.loads((small_filesystem / "run" / "run.json").read_text())
    assert manifest["status"] == "failed" and "No space left on device" in manifest["error"], manifest
    assert not (small_filesystem / "run" / ".runner-claim").exists()


@pytest.fixture
def roomy_filesystem(tmp_path):
    with tmpfs(tmp_path / "disk", "16m") as folder:
        yield folder


def test_disk_full_after_the_model_is_saved_leaves_run_json_failed_and_the_model_whole(tmp_path, monkeypatch,
                                                                                      roomy_filesystem):
    """The filesystem fills up right after the model is saved: metrics.json, report.md and a new run.json find no
    room; run.json is rewritten in place with the status and the reason, and the saved model stays loadable."""
    from safetensors.torch import load_file

    from runner.evaluate import measure as evaluation
    from runner.records.outputs import RecordsNotWritten
    from runner.plan.build import build_plan
    from runner.recipe.load import load_recipe
    from runner.commands.run import run

    measure = evaluation.measure

    def fill_the_disk_then_measure(trainer, plan, splits):  # called right after the model was saved
        with open(roomy_filesystem / "filler", "wb") as handle:
            try:
                while True:
                    handle.write(b"\0" * 65536)
                    handle.flush()
            except OSError:
                pass
        return measure(trainer, plan, splits)

    monkeypatch.setattr(evaluation, "measure", fill_the_disk_then_measure)
    out = roomy_filesystem / "run"
    plan = build_plan(load_recipe(recipe_in(tmp_path), [f"output.dir={out}"]))
    with pytest.raises(RecordsNotWritten) as info:
        run(plan, argv=["test"])
    message = info.value.render()
    assert "could not write metrics.json (No space left on device)" in message and "model is saved" in message
    assert "run.json (No space left on device; reduced to the status alone" in message
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["status"] == "failed" and "No space left on device" in manifest["error"], manifest
    assert "hardware" not in manifest, "the brief status record written in place of the full one"
    assert load_file(out / "model.safetensors"), "the model saved before the disk filled is whole"
    assert not (out / ".runner-claim").exists()


def test_model_files_are_as_readable_as_the_records(tmp_path):
    """Under a group-sharing umask (027) every file of the run directory gets the same mode (0640)."""
    recipe = recipe_in(tmp_path, training={"save_strategy": "steps", "save_steps": 1})
    done = subprocess.run(f"umask 027 && {shlex.quote(sys.executable)} -m runner {shlex.quote(str(recipe))}",
                          shell=True, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    modes = {str(p): stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "run").rglob("*") if p.is_file()}
    assert any(name.endswith("checkpoint-2/model.safetensors") for name in modes), sorted(modes)
    assert set(modes.values()) == {0o640}, modes  # safetensors writes 0600 whatever the umask


def test_a_recipe_path_that_is_a_symlink_loop(tmp_path):
    (tmp_path / "a.json").symlink_to(tmp_path / "b.json")
    (tmp_path / "b.json").symlink_to(tmp_path / "a.json")
    for command in (["validate"], ["plan"], []):
        assert_user_error(cli(*command, tmp_path / "a.json"), str(tmp_path / "a.json"), "ymlink loop")


# --- the command line ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv,named", [
    (["valdate", "recipes/quickstart.json"], ["'valdate' is neither a command nor a recipe file",
                                              "did you mean 'validate'?"]),
    (["frobnicate"], ["the commands are: run, validate"]),
    (["predict", "nowhere", "--text", ""], ["an input is empty"]),
    (["predict", "nowhere", "--text", "   "], ["an input is empty"]),
], ids=["mistyped-command", "unknown-command", "predict-empty-text", "predict-blank-text"])
def test_command_line_mistakes(argv, named):
    assert_user_error(cli(*argv), *named)


def test_a_huge_file_of_unknown_keys_is_reported_briefly(tmp_path):
    """170,000 stray keys (a 5 MB 'recipe'): 20 named with their hints per object, the rest counted."""
    stray = {f"learning_rat{i}": i for i in range(170_000)}
    path = write_json(tmp_path / "huge.json", {"name": "x", "training": stray, **{f"k{i}": 1 for i in range(50)}})
    outcome = cli("validate", path)
    assert_user_error(outcome, "/training: 169,980 more unknown keys (not listed)", "/: 30 more unknown keys",
                      "/training/learning_rat0: unknown key", "did you mean 'learning_rate'?")
    assert len(outcome.stderr.splitlines()) < 100


def test_two_processes_into_a_directory_in_use_both_stop_with_the_message(tmp_path):
    """Under `accelerate launch` only the main process claims; the refusal reaches every rank (no rank waits at a
    barrier for a main process that stopped), and the launch exits non-zero within the timeout."""
    from commandline import free_port

    out = tmp_path / "run"
    out.mkdir()
    owner = {"host": "node-3.cluster", "pid": 777, "since": "2026-12-05T00:00:00", "nonce": "x"}
    (out / ".runner-claim").write_text(json.dumps(owner))
    before = Snapshot(out)
    done = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines",
         "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
         "-m", "runner", str(recipe_in(tmp_path))], cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert done.returncode != 0 and "Traceback" not in done.stderr.split("exitcode")[0], done.stderr[-3000:]
    assert done.stderr.count("in use by another run: process 777 on host node-3.cluster") == 2, done.stderr[-3000:]
    before.assert_unchanged()


def test_a_note_left_inside_a_checkpoint_stops_overwrite(tmp_path):
    recipe = recipe_in(tmp_path, training={"save_strategy": "steps", "save_steps": 1})
    assert cli(recipe).code == 0
    (tmp_path / "run" / "checkpoint-2" / "MY_NOTES.txt").write_text("why step 2 matters")
    before = Snapshot(tmp_path / "run")
    assert_user_error(cli(recipe, "--overwrite"), "checkpoint-2/MY_NOTES.txt", "which the runner did not write")
    before.assert_unchanged()


def test_merge_into_a_run_directory_is_refused(tmp_path):
    recipe = recipe_in(tmp_path, peft={"method": "lora", "r": 4, "lora_alpha": 8})
    assert cli(recipe).code == 0
    before = Snapshot(tmp_path / "run")
    assert_user_error(cli("merge", tmp_path / "run", "--out", tmp_path / "run" / "base_model" / "merged"),
                      "--out", "is inside the run directory", "outside any run directory")
    before.assert_unchanged()


def test_an_output_dir_name_too_long_for_the_filesystem(tmp_path):
    assert_user_error(cli(recipe_in(tmp_path), "--set", f"output.dir={tmp_path / ('é' * 200)}"),
                      "/output/dir", "File name too long", "choose a shorter output.dir")


@pytest.mark.parametrize("overwrite", [False, True], ids=["new-run", "overwrite"])
def test_ctrl_c_as_soon_as_the_records_appear_stops_the_run_cleanly(tmp_path, overwrite):
    """SIGINT the moment plan.json is written (before training starts): the run stops after its first step with a
    checkpoint and the resume command, never trains on to the end; an earlier run being replaced is kept."""
    out = tmp_path / "run"
    if overwrite:
        assert cli(recipe_in(tmp_path, training={"max_steps": 2}), "--set", f"output.dir={out}").code == 0
        (out / "plan.json").unlink()  # so that the new run's plan.json is what the test waits for
        earlier = Snapshot(out / "model.safetensors")
    process = long_run(tmp_path, out, *(["--overwrite"] if overwrite else []), steps=400)
    wait_for(lambda: (out / "plan.json").is_file(), "the run's records")
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 130 and "resume with: " in stderr, stderr[-3000:]
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["status"] == "interrupted" and manifest["history"][-1]["step"] < 40, manifest["history"][-1:]
    if overwrite:
        (kept,) = out.glob(".replaced-*")
        assert Snapshot(kept / "model.safetensors").files.values().__iter__().__next__() == \
            next(iter(earlier.files.values())), "the earlier run's model is kept until the new one finishes"


def test_predict_on_an_overwrite_killed_midway_names_the_earlier_run_it_kept(tmp_path):
    out = tmp_path / "run"
    assert cli(recipe_in(tmp_path, training={"max_steps": 2}), "--set", f"output.dir={out}").code == 0
    (out / "plan.json").unlink()
    process = long_run(tmp_path, out, "--overwrite", steps=400)
    wait_for(lambda: (out / "plan.json").is_file(), "the new run's records")
    process.kill()  # SIGKILL: no records, no cleanup
    process.communicate(timeout=60)
    (kept,) = out.glob(".replaced-*")
    before = Snapshot(kept)
    assert_user_error(cli("predict", out, "--text", "abc"), "status 'running'", "it was replacing an earlier run",
                      f"kept in {kept}", f"mv {kept} {out}-earlier")
    before.assert_unchanged()


def test_a_tokenization_cache_inside_the_run_directory_is_refused_before_anything_runs(tmp_path):
    recipe = recipe_in(tmp_path, data={"train": {"path": "train.jsonl"},
                                       "tokenization_cache": str(tmp_path / "run" / "cache")})
    assert_user_error(cli("validate", recipe), "/data/tokenization_cache", "is inside the run directory",
                      "choose a directory of its own")
    assert not (tmp_path / "run").exists()
