"""What every rank checks before the model loads, and work shared across ranks.

A multi-process job whose ranks disagree (a node with an edited recipe, another runner version or
libraries) trains something nobody asked for, or hangs in a collective that only some ranks reach.
`agree` makes one collective smoke test (all_reduce) and compares what each rank resolved; a
mismatch stops every rank with the same message naming the ranks that differ, and a collective that
does not complete within the timeout stops the job instead of hanging.
"""
from __future__ import annotations

import hashlib
import json
import socket
import sys
import threading

from runner import __version__
from runner.errors import Problem, RecipeError
from runner.recipe.load import differing_paths

AGREEMENT_TIMEOUT_S = 300.0  # generous: the first collective also sets up the transport (NCCL) between nodes


def fingerprint(plan: dict) -> dict:
    """What must agree across ranks: the resolved recipe, the settings each rank decided for its machine
    (fast defaults: a rank with another GPU or without a kernel decides otherwise), the runner and library versions."""
    from runner.records.outputs import versions

    return {"recipe": _sha256(plan["recipe"]), "decisions": _sha256(agreed_decisions(plan)), "runner": __version__,
            "libraries": _sha256(versions()), "host": socket.gethostname()}


# Decided per machine and harmless when ranks differ: neither the batches nor the collectives change.
PER_RANK_DECISIONS = frozenset({"/training/dataloader_num_workers"})


def agreed_decisions(plan: dict) -> dict:
    """The launch-time decisions every rank must share (dtype, packing, padding, checkpointing, optimizer, kernels)."""
    from runner.plan.decisions import decided_values

    return {path: value for path, value in decided_values(plan).items() if path not in PER_RANK_DECISIONS}


def _sha256(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def agree(plan: dict, state, timeout_s: float = AGREEMENT_TIMEOUT_S):
    """On every rank, before the model loads; a single process has nothing to compare (returns None).

    Returns the CPU (gloo) group the ranks agree on signals with (runner.train.resume.RankAgreement), made and tested
    here, where a blocked transport stops the job within the timeout instead of after the model has loaded.
    """
    if state.num_processes == 1:
        return None
    mine = {**fingerprint(plan), "doc": plan["recipe"], "decided": agreed_decisions(plan)}
    found, cpu_group = within(timeout_s, lambda: _smoke_test_and_gather(mine, state),
                              f"the collective smoke test (all_reduce across {state.num_processes} processes, on the "
                              f"training backend and on gloo) did not complete in {timeout_s:.0f} s: a rank stopped "
                              "before reaching it (see every rank's log for its error), is stuck, or the network "
                              "between the nodes is blocked (check MASTER_ADDR/--main_process_ip, the port, "
                              "firewalls, NCCL_SOCKET_IFNAME and GLOO_SOCKET_IFNAME)")
    problems = mismatches(found)
    if problems:
        raise RecipeError(problems)
    return cpu_group


def _smoke_test_and_gather(mine: dict, state) -> tuple[list[dict], object]:
    import torch
    import torch.distributed as dist

    if state.device.type == "cuda":  # the current CUDA device is per thread; all_gather_object uses it
        torch.cuda.set_device(state.device)
    ones = torch.ones(1, device=state.device)
    dist.all_reduce(ones)
    cpu_group = dist.new_group(backend="gloo")
    cpu_ones = torch.ones(1)
    dist.all_reduce(cpu_ones, group=cpu_group)
    for backend, value in (("the training backend", ones.item()), ("gloo", cpu_ones.item())):
        if int(value) != state.num_processes:
            raise RuntimeError(f"all_reduce of ones on {backend} gave {value}, expected {state.num_processes}: "
                               "the process group is broken")
    gathered: list = [None] * state.num_processes
    dist.all_gather_object(gathered, mine)
    return gathered, cpu_group


def within(timeout_s: float, work, message: str):
    """Run `work` with a time limit; past it raise RuntimeError(message) rather than wait forever."""
    box: dict = {}

    def target():
        try:
            box["value"] = work()
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True, name="runner-rank-agreement")
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        print(f"error: {message}", file=sys.stderr, flush=True)
        raise RuntimeError(message)
    if "error" in box:
        raise box["error"]
    return box["value"]


def mismatches(found: list[dict]) -> list[Problem]:
    """Problems naming the ranks that differ from rank 0, with the recipe fields they differ in."""
    reference, problems = found[0], []
    for key, what, hint in (
        ("runner", "runner version", "install the same recipe-runner on every node"),
        ("libraries", "library versions (torch, transformers, trl, ...)", "use the same environment on every node"),
        ("recipe", "recipe (after extends, --set and path resolution)", "every node must read the same recipe file and data paths (a shared "
                                      "filesystem, the same path), with the same --set overrides"),
        ("decisions", "set of launch-time decisions for the recipe's null fields (fast defaults)",
         "the nodes differ (GPU kind or memory, installed kernels, CPUs): set these fields in the recipe so every "
         "rank uses the same value"),
    ):
        differ = [rank for rank, other in enumerate(found) if other[key] != reference[key]]
        if not differ:
            continue
        where = ", ".join(f"{rank} ({found[rank]['host']})" for rank in differ)
        detail = ""
        if key == "recipe":
            fields = sorted({f for rank in differ for f in differing_paths(reference["doc"], found[rank]["doc"])})
            detail = f"; differing fields: {', '.join(fields[:10])}" if fields else ""
        elif key == "decisions":  # {JSON path: value}
            detail = "; " + ", ".join(f"{path}: {found[rank]['decided'].get(path)!r} on rank {rank} vs "
                                      f"{reference['decided'].get(path)!r}"
                                      for rank in differ for path in sorted(reference["decided"].keys() | found[rank]["decided"].keys())
                                      if found[rank]["decided"].get(path) != reference["decided"].get(path))
        elif key == "runner":
            detail = f" ({found[differ[0]]['runner']} vs {reference['runner']})"
        problems.append(Problem("/", f"rank(s) {where} resolved a different {what} than rank 0 "
                                     f"({reference['host']}){detail}; every rank stopped before loading the model",
                                hint))
    return problems


# Accelerate's distributed types each engine the launch environment asks for (runner/plan/topology.py) may get;
# "MULTI_" covers DDP on any device (MULTI_GPU, MULTI_CPU, MULTI_XPU, ...), also in a one-process launch.
ENGINE_TYPES = {"single": ("NO", "MULTI_"), "ddp": ("MULTI_",), "deepspeed": ("DEEPSPEED",), "fsdp": ("FSDP",)}
CPU_HINT = ("on a machine without GPUs use accelerate_configs/multi_gpu.yaml (DDP over gloo) or a DeepSpeed "
            "config; FSDP needs GPUs")


def check_engine(topology: dict, gpus: int, distributed_type: str | None = None) -> None:
    """The engine the launch asked for is the one Accelerate set up.

    Accelerate 1.15 turns FSDP on only for GPU process groups: launched with an FSDP config on a machine without
    GPUs it trains with plain DDP, every process holding the whole model, and says nothing. Refused before the
    model loads (`distributed_type` None), and once more against the trainer's Accelerator after it is built.
    """
    engine = topology["engine"]
    if distributed_type is None:
        if engine == "fsdp" and not gpus:
            raise RecipeError([Problem("distributed_type", "the launch asked for FSDP, but this machine has no GPU: "
                                       "Accelerate would silently train with plain DDP instead", CPU_HINT)])
        return
    actual = str(distributed_type).rsplit(".", 1)[-1]
    if not actual.startswith(ENGINE_TYPES[engine]):
        raise RecipeError([Problem("distributed_type", f"the launch asked for {engine} ({topology['world_size']} "
                                   f"process(es)), but Accelerate set up {actual}",
                                   "check that the Accelerate config and `accelerate launch` flags name one engine, and "
                                   "that its library is installed (deepspeed for DeepSpeed)")])


def shard_bounds(count: int, rank: int, world: int) -> tuple[int, int]:
    """The contiguous slice of `count` items rank `rank` of `world` takes (sizes differ by at most one)."""
    base, extra = divmod(count, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


def on_main(state, cpu_group, work):
    """Run `work` on the main process only and return its result on every rank. A RecipeError there is raised on
    every rank alike, so no rank is left waiting at a barrier for a main process that has stopped."""
    if state.num_processes == 1:
        return work()
    import torch.distributed as dist

    outcome, failure = [None], None
    if state.is_main_process:
        try:
            outcome = [("ok", work())]
        except RecipeError as err:
            outcome = [("error", err.problems)]
        except BaseException as exc:  # still tell the others, then stop here with the real error
            outcome, failure = [("failed", f"{type(exc).__name__} on the main process")], exc
    dist.broadcast_object_list(outcome, src=0, group=cpu_group)
    if failure is not None:
        raise failure
    kind, value = outcome[0]
    if kind == "error":
        raise RecipeError(value)
    if kind == "failed":
        raise RuntimeError(f"{value}; see its log")
    return value
