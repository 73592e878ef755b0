"""Where a run executes: how many processes, on how many machines, through which engine.

The recipe never says this (the same recipe runs on one GPU or sixty-four); the plan takes it
as an input (`plan --world-size N`, or the launcher's environment at run time) to reconcile the
batch and estimate memory per device.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Topology:
    world_size: int = 1          # processes in all (GPUs), across every machine
    num_machines: int = 1
    engine: str = "single"       # "single" | "ddp" | "deepspeed" | "fsdp"
    zero_stage: int | None = None  # DeepSpeed ZeRO stage, when engine == "deepspeed"
    offload_optimizer: bool = False
    offload_params: bool = False

    def to_dict(self) -> dict:
        return asdict(self)
