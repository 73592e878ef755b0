"""Checkpoints are whole or skipped (issue 13, "Nothing lost, no tracebacks").

One interrupted run is made per module (6 steps, a checkpoint every 2, Ctrl-C at step 4: checkpoint-2
and checkpoint-4, run.json 'interrupted') and each case damages a copy of it, as a full disk, a killed
copy or a careless `rm` would. Asserted as a user meets it: `--resume` names the damaged checkpoint and
file and continues from the previous whole checkpoint, or refuses (exit 2) when none is whole; never a
traceback; and the damaged files stay byte for byte as they were.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from assets import reverse_rows
from conftest import base_recipe, write_json, write_jsonl
from faults import Outcome, Snapshot, assert_user_error, cli, interrupt_at

STEPS, SAVE_EVERY, STOP_AT = 6, 2, 4
TRAINING = {"max_steps": STEPS, "save_strategy": "steps", "save_steps": SAVE_EVERY, "learning_rate": 5e-3,
            "per_device_train_batch_size": 8, "logging_steps": 1, "dataloader_num_workers": 0}


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory) -> Path:
    """A folder with train.jsonl and run/: an interrupted run with checkpoint-2 and checkpoint-4. Read only."""
    from runner.plan.build import build_plan
    from runner.recipe.load import load_recipe
    from runner.train.resume import RunInterrupted
    from runner.commands.run import prepare, train

    made = tmp_path_factory.mktemp("interrupted")
    write_jsonl(made / "train.jsonl", [{"text": r["prompt"] + r["completion"]} for r in reverse_rows(64, seed=5)])
    path = write_json(made / "recipe.json", recipe(made, made / "run"))
    prepared = prepare(build_plan(load_recipe(path)))
    prepared.trainer.add_callback(interrupt_at(STOP_AT - 1))  # the runner sees it at the end of the next step
    with pytest.raises(RunInterrupted):
        train(prepared.plan, prepared, ["test"])
    assert sorted(p.name for p in (made / "run").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    return made


def recipe(made: Path, run_dir: Path) -> dict:
    return base_recipe(run_dir.parent, data={"train": {"path": str(made / "train.jsonl")}}, training=TRAINING,
                       output={"dir": str(run_dir)})


@pytest.fixture
def copy(interrupted, tmp_path):
    """(recipe file, run directory): a copy of the interrupted run for one case to damage."""
    run_dir = tmp_path / "run"
    shutil.copytree(interrupted / "run", run_dir)
    return write_json(tmp_path / "recipe.json", recipe(interrupted, run_dir)), run_dir


# --- the damage kinds: what is done to a checkpoint, and the file the message must name --------------------------

def remove(name):
    return lambda folder: (folder / name).unlink()


def truncate(name):
    def cut(folder):
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[: len(data) // 2])
    return cut


def flip_one_byte(name):
    def flip(folder):
        data = bytearray((folder / name).read_bytes())
        data[len(data) // 2] ^= 0x01
        (folder / name).write_bytes(bytes(data))
    return flip


def not_json(name):
    return lambda folder: (folder / name).write_text('{"recipe": {"name": "t", ')


DAMAGE = {  # kind: (damage, file named, what the message says about it)
    "weights missing": (remove("model.safetensors"), "model.safetensors", "is missing"),
    "weights truncated": (truncate("model.safetensors"), "model.safetensors", "(truncated or replaced)"),
    "weights one byte flipped": (flip_one_byte("model.safetensors"), "model.safetensors", "has changed"),
    "optimizer missing": (remove("optimizer.pt"), "optimizer.pt", "is missing"),
    "scheduler missing": (remove("scheduler.pt"), "scheduler.pt", "is missing"),
    "trainer_state truncated": (truncate("trainer_state.json"), "trainer_state.json", "(truncated or replaced)"),
    "trainer_state missing": (remove("trainer_state.json"), "trainer_state.json", "is missing"),
    "marker missing": (remove("runner_checkpoint.json"), "runner_checkpoint.json", "is missing"),
    "marker not JSON": (not_json("runner_checkpoint.json"), "runner_checkpoint.json", "is not readable JSON"),
    "rng state missing": (remove("rng_state.pth"), "rng_state.pth", "is missing"),
}


def in_process(capsys, *args) -> Outcome:
    """`python -m runner ARGS` through the same `main`, in this process: 6 s of imports saved per case (the
    command-line cases below pay them once). An exception escaping `main` would fail the test, as a traceback."""
    from runner.__main__ import main

    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return Outcome(code, out, err)


def files_of(folder: Path) -> dict:
    """{relative path: (sha256, mode)} of every file under `folder`, to compare a folder that moved."""
    return {Path(p).relative_to(folder).as_posix(): v for p, v in Snapshot(folder).files.items()}


@pytest.mark.parametrize("kind", DAMAGE)
def test_a_damaged_newest_checkpoint_is_named_and_the_previous_whole_one_chosen(copy, kind, capsys):
    """The decision, for every kind: in-process (no training), so the table stays fast."""
    from runner.recipe.load import load_recipe
    from runner.train.resume import resume_point

    path, run_dir = copy
    damage, name, what = DAMAGE[kind]
    damage(run_dir / "checkpoint-4")
    before = Snapshot(run_dir)
    assert resume_point(run_dir, load_recipe(path).to_dict()) == run_dir / "checkpoint-2"
    err = capsys.readouterr().err
    warning = next(line for line in err.splitlines() if line.startswith("warning:"))
    assert str(run_dir / "checkpoint-4") in warning and name in warning and what in warning, err
    assert f"resuming from checkpoint-2 (step 2 of {STEPS})" in err
    before.assert_unchanged()


@pytest.mark.parametrize("kind", DAMAGE)
def test_no_whole_checkpoint_is_refused_and_nothing_is_touched(copy, kind, capsys):
    path, run_dir = copy
    damage, name, what = DAMAGE[kind]
    for step in (2, 4):
        damage(run_dir / f"checkpoint-{step}")
    before = Snapshot(path.parent)
    outcome = in_process(capsys, path, "--resume")
    assert_user_error(outcome, "/output/if_exists", "no whole checkpoint", f"checkpoint-4: {name}",
                      f"checkpoint-2: {name}", what, "--overwrite")
    before.assert_unchanged()


def test_no_whole_checkpoint_is_refused_through_the_command_line(copy):
    path, run_dir = copy
    truncate("model.safetensors")(run_dir / "checkpoint-4")
    remove("optimizer.pt")(run_dir / "checkpoint-2")
    before = Snapshot(path.parent)
    assert_user_error(cli(path, "--resume"), "/output/if_exists", "no whole checkpoint",
                      "checkpoint-4: model.safetensors is", "checkpoint-2: optimizer.pt is missing", "--overwrite")
    before.assert_unchanged()


def test_resume_continues_from_the_previous_whole_checkpoint_to_the_same_losses(interrupted, copy):
    """End to end through the command line, with the fault that used to resume silently with a fresh optimizer
    (one kind: the table above covers the decision for all, at a fraction of the 10-20 s a resumed run takes).
    The losses of steps 3 and 4 trained again from checkpoint-2 equal those of the first run: the optimizer,
    scheduler and RNG states came back from checkpoint-2, not fresh ones."""
    path, run_dir = copy
    damage, name, what = DAMAGE["optimizer missing"]
    damage(run_dir / "checkpoint-4")
    damaged, whole = files_of(run_dir / "checkpoint-4"), Snapshot(run_dir / "checkpoint-2")
    outcome = cli(path, "--resume")
    assert outcome.code == 0 and "Traceback" not in outcome.stderr, outcome
    assert f"{run_dir / 'checkpoint-4'} is damaged and skipped: {name} {what}" in outcome.stderr, outcome
    assert f"resuming from checkpoint-2 (step 2 of {STEPS})" in outcome.stderr, outcome

    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "finished" and (run_dir / "model.safetensors").is_file()
    first = json.loads((interrupted / "run" / "run.json").read_text())
    losses = lambda r: {h["step"]: h["loss"] for h in r["history"] if "loss" in h}  # noqa: E731
    assert [losses(record)[s] for s in (3, 4)] == pytest.approx([losses(first)[s] for s in (3, 4)], abs=1e-5)
    # the damaged checkpoint was moved out of the way of the new checkpoint-4, its files as they were
    assert files_of(run_dir / "damaged-checkpoint-4") == damaged
    assert "checkpoint-4 (damaged) renamed to damaged-checkpoint-4" in outcome.stderr
    whole.assert_unchanged()
    assert sorted(p.name for p in run_dir.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]


def test_the_marker_lists_every_file_of_the_checkpoint_with_size_and_sha256(interrupted):
    from runner.records.checkpoints import COMPLETE

    folder = interrupted / "run" / "checkpoint-4"
    marker = json.loads((folder / COMPLETE).read_text())
    on_disk = {p.name: p for p in folder.iterdir() if p.is_file() and p.name != COMPLETE}
    assert set(marker["files"]) == set(on_disk)
    assert {"model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"} <= set(on_disk)
    for name, saved in marker["files"].items():
        content = on_disk[name].read_bytes()
        assert saved == {"size": len(content), "sha256": hashlib.sha256(content).hexdigest()}, name
    assert marker["step"] == STOP_AT and marker["max_steps"] == STEPS


def test_predict_on_an_interrupted_run_says_so_and_how_to_go_on(copy):
    path, run_dir = copy
    before = Snapshot(run_dir)
    outcome = cli("predict", run_dir, "--text", "reverse abc =")
    assert_user_error(outcome, "the run did not finish", "'interrupted'", "checkpoint-4 (step 4 of 6)", "--resume",
                      f"python -m runner predict {run_dir / 'checkpoint-4'}")
    before.assert_unchanged()


def test_predict_on_a_whole_checkpoint_answers_and_on_a_damaged_one_names_the_file(copy, capsys):
    path, run_dir = copy
    outcome = cli("predict", run_dir / "checkpoint-4", "--text", "reverse abc =", "--max-new-tokens", "4")
    assert outcome.code == 0, outcome
    assert json.loads(outcome.stdout.splitlines()[-1])["input"] == "reverse abc ="

    truncate("model.safetensors")(run_dir / "checkpoint-2")
    before = Snapshot(run_dir)
    outcome = in_process(capsys, "predict", run_dir / "checkpoint-2", "--text", "reverse abc =")
    assert_user_error(outcome, f"{run_dir / 'checkpoint-2'} is damaged", "model.safetensors is", "truncated")
    before.assert_unchanged()


def test_a_marker_of_an_earlier_runner_is_resumed_unverified_with_a_warning(copy, capsys):
    """Runs interrupted before markers listed their files still resume (as that runner would), and say so."""
    from runner.recipe.load import load_recipe
    from runner.records.checkpoints import COMPLETE
    from runner.train.resume import resume_point

    path, run_dir = copy
    marker = json.loads((run_dir / "checkpoint-4" / COMPLETE).read_text())
    del marker["files"], marker["max_steps"]
    write_json(run_dir / "checkpoint-4" / COMPLETE, marker)
    assert resume_point(run_dir, load_recipe(path).to_dict()) == run_dir / "checkpoint-4"
    err = capsys.readouterr().err
    assert "checkpoint-4 was saved by an earlier runner that did not record its files" in err
    assert "resuming from checkpoint-4 (step 4)" in err


def test_a_checkpoint_damaged_again_is_set_aside_beside_the_first_one(copy):
    from runner.train.resume import set_aside_newer

    path, run_dir = copy
    (run_dir / "damaged-checkpoint-4").mkdir()  # from an earlier resume
    kept = files_of(run_dir / "checkpoint-4")
    set_aside_newer(run_dir, 2)
    assert files_of(run_dir / "damaged-checkpoint-4.1") == kept and not (run_dir / "checkpoint-4").exists()
    assert (run_dir / "checkpoint-2").is_dir()
