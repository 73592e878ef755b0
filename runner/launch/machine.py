"""What the machine a run lands on offers: GPUs, bf16, CPUs, kernels. Read once per process at launch."""
from __future__ import annotations

import importlib.util
import os
import platform


def hardware() -> dict:
    """What this process can see. bf16: whether the device that trains (the GPU, else the CPU) computes bf16
    natively, which `training.bf16: null` follows (runner/launch/decide.py); cpu_bf16: the CPU flag that said so."""
    import torch

    from runner.launch import cpu

    cuda = torch.cuda.is_available()
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else []
    cpu_bf16 = cpu.probe()
    return {
        "platform": platform.platform(),
        # the CPUs this process may use (Slurm and cgroups restrict the affinity), not the machine's total
        "cpu_count": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "gpus": gpus,
        "bf16": bool(torch.cuda.is_bf16_supported()) if cuda else cpu_bf16["native"],
        "cpu_bf16": cpu_bf16,
    }


def probe(hardware: dict) -> dict:
    """The machine facts the rules read (imports torch; launch time only)."""
    import torch

    gpu = torch.cuda.is_available()
    return {
        "gpus": len(hardware["gpus"]),
        "gpu_memory_gib": torch.cuda.get_device_properties(0).total_memory / 2**30 if gpu else None,
        "bf16": hardware["bf16"],  # the GPU's, or the CPU's when there is no GPU
        "cpu_bf16": hardware.get("cpu_bf16"),  # which CPU flag said so, read where (runner/launch/cpu.py)
        "cpus": hardware["cpu_count"] or 1,
        "varlen": gpu and kernel_available(),
        "liger": importlib.util.find_spec("liger_kernel") is not None,
    }


def varlen_kernel():
    """PyTorch's varlen flash kernel, or None when this torch has none."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


def kernel_available() -> bool:
    """The kernel exists and a CUDA GPU it runs on (flash attention needs compute capability 8.0+) is visible."""
    import torch

    if varlen_kernel() is None or not torch.cuda.is_available():
        return False
    return torch.cuda.get_device_capability()[0] >= 8
