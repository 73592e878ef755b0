"""Rank agreement (runner.launch.ranks) and resume across process counts (runner.train.resume), without processes.
"""
from __future__ import annotations

import threading
import time

import pytest

from conftest import base_recipe, write_json, write_jsonl
from runner.launch import ranks as distributed
from runner.errors import RecipeError
from runner.plan.build import build_plan
from runner.recipe.load import load_recipe
from runner.records.checkpoints import COMPLETE
from runner.train.resume import resume_point
from runner.plan.topology import Topology


def test_mismatching_ranks_are_named_with_the_fields_they_differ_in():
    base = {"recipe": "a", "decisions": "d", "runner": "0.1", "libraries": "l", "host": "n0",
            "doc": {"training": {"seed": 1}}, "decided": {}}
    other = {**base, "recipe": "b", "host": "n1", "doc": {"training": {"seed": 2}}}
    assert distributed.mismatches([base, dict(base)]) == []
    problems = distributed.mismatches([base, dict(base), other, {**other, "runner": "0.2"}])
    messages = [p.message for p in problems]
    assert messages[0].startswith("rank(s) 3 (n1) resolved a different runner version than rank 0 (n0) (0.2 vs 0.1)")
    assert messages[1].startswith("rank(s) 2 (n1), 3 (n1) resolved a different recipe (after extends, --set and path resolution) than rank 0")
    assert "differing fields: /training/seed" in messages[1]


def test_ranks_whose_machines_decide_other_fast_defaults_are_named(tmp_path, recipe_file):
    """A node without PyTorch's varlen kernel decides padded batches where the others pack: refused, not trained
    with per-rank batch shapes. Worker counts may differ (they change neither batches nor collectives)."""
    from runner.launch import decide as fast
    from runner.plan import decisions

    write_jsonl(tmp_path / "train.jsonl", [{"text": "x"}])
    plan = build_plan(load_recipe(recipe_file(base_recipe(tmp_path))))
    machine = {"gpus": 8, "gpu_memory_gib": 79.2, "bf16": True, "cpus": 64, "varlen": True, "liger": False}

    def found(*machines):
        ranks = [fast.apply(plan, decisions.decide(plan, m)) for m in machines]
        return [{**distributed.fingerprint(p), "doc": p["recipe"], "decided": distributed.agreed_decisions(p)}
                for p in ranks]

    assert distributed.mismatches(found(machine, {**machine, "cpus": 16})) == []  # 4 workers vs 0
    ranks = found(machine, machine, {**machine, "varlen": False})
    assert ranks[0]["recipe"] == ranks[2]["recipe"] and ranks[0]["decisions"] != ranks[2]["decisions"]
    [problem] = distributed.mismatches(ranks)
    assert problem.message.startswith("rank(s) 2 (")
    assert "/training/packing: False on rank 2 vs True" in problem.message
    assert "set these fields in the recipe" in problem.hint


def test_a_collective_that_never_completes_stops_instead_of_hanging():
    never = threading.Event()
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="did not complete"):
        distributed.within(0.5, never.wait, "the smoke test did not complete")
    assert time.monotonic() - started < 5
    assert distributed.within(5, lambda: 42, "unused") == 42
    with pytest.raises(ZeroDivisionError):
        distributed.within(5, lambda: 1 / 0, "unused")


def test_shards_cover_every_item_once_with_the_largest_first():
    for count in range(0, 12):
        for world in (1, 2, 3, 5):
            bounds = [distributed.shard_bounds(count, rank, world) for rank in range(world)]
            assert [i for start, stop in bounds for i in range(start, stop)] == list(range(count))
            assert bounds[0][1] - bounds[0][0] == max(stop - start for start, stop in bounds)


def test_resume_on_another_number_of_processes_is_refused(tmp_path):
    recipe = {"data": {"train": {"hub": "x"}}}
    checkpoint = tmp_path / "checkpoint-4"
    write_json(checkpoint / COMPLETE, {"recipe": recipe, "step": 4, "world_size": 2})
    assert resume_point(tmp_path, recipe, world_size=2) == checkpoint
    with pytest.raises(RecipeError) as err:
        resume_point(tmp_path, recipe, world_size=4)
    assert "checkpoint-4 was saved by a run with 2 process(es); this launch has 4" in err.value.render()
    assert "--num_processes 2" in err.value.render()


def test_the_engine_accelerate_set_up_must_be_the_one_launched():
    fsdp, ddp = Topology(2, 1, "fsdp").to_dict(), Topology(2, 1, "ddp").to_dict()
    with pytest.raises(RecipeError) as err:
        distributed.check_engine(fsdp, gpus=0)
    assert "asked for FSDP, but this machine has no GPU" in err.value.render()
    distributed.check_engine(fsdp, gpus=8)
    distributed.check_engine(fsdp, gpus=8, distributed_type="DistributedType.FSDP")
    with pytest.raises(RecipeError) as err:
        distributed.check_engine(fsdp, gpus=8, distributed_type="DistributedType.MULTI_GPU")
    assert "asked for fsdp (2 process(es)), but Accelerate set up MULTI_GPU" in err.value.render()
    distributed.check_engine(ddp, gpus=0, distributed_type="DistributedType.MULTI_CPU")
    distributed.check_engine(Topology().to_dict(), gpus=1, distributed_type="DistributedType.NO")
    with pytest.raises(RecipeError, match="asked for deepspeed"):
        distributed.check_engine(Topology(2, 1, "deepspeed", 3).to_dict(), gpus=2, distributed_type="MULTI_GPU")
