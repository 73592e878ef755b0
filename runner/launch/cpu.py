"""Whether this CPU computes bf16 natively: the fact the launch-time precision rule reads on a machine without GPUs.

bf16 autocast pays on a CPU only where bf16 arithmetic is in the instruction set (x86: AVX512_BF16 or AMX-BF16;
Arm: the BF16 extension). Measured on a 2-core AMD EPYC with avx512_bf16 (bench/RESULTS.md, "bf16 on the CPU"):
a SmolLM2-135M LoRA step took 4.4 s in bf16 autocast against 8.5 s in fp32, per-step losses within 0.9%. With
oneDNN kept from those instructions (as on an AVX-512 CPU without them) bf16 took 14.0 s against 6.1 s: there
every bf16 matmul converts to fp32 and back, so fp32 is chosen (TRL's default would train in bf16 anyway).

Read from the flags the kernel reports in /proc/cpuinfo (Linux; x86 "flags", Arm "Features"); elsewhere from
torch.cpu.get_capabilities() (there in torch 2.13: the same names, from CPUID), else nothing is known (fp32).
"""
from __future__ import annotations

from pathlib import Path

# The first found is named in the reason. Linux spells Arm SVE's "svebf16", torch "sve_bf16".
NATIVE_BF16 = ("amx_bf16", "avx512_bf16", "bf16", "sve_bf16", "svebf16")
CPUINFO = Path("/proc/cpuinfo")


def flags_in_cpuinfo(text: str) -> set[str]:
    """Pure: every flag on the `flags` (x86) or `Features` (Arm) lines of /proc/cpuinfo text."""
    found: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            found.update(value.split())
    return found


def bf16_support(flags: set[str], source: str) -> dict:
    """Pure: {"native", "feature" (the flag that says so, or None), "source"} for a set of CPU flags."""
    feature = next((f for f in NATIVE_BF16 if f in flags), None)
    return {"native": feature is not None, "feature": feature, "source": source}


def probe() -> dict:
    """This machine's bf16_support: /proc/cpuinfo when it lists flags, else torch's own CPU capabilities."""
    try:
        flags = flags_in_cpuinfo(CPUINFO.read_text())
    except OSError:
        flags = set()
    if flags:
        return bf16_support(flags, str(CPUINFO))
    import torch

    capabilities = getattr(torch.cpu, "get_capabilities", None)
    if capabilities is None:
        return {"native": False, "feature": None, "source": f"nothing to read (no {CPUINFO}, torch "
                                                            f"{torch.__version__} has no torch.cpu.get_capabilities)"}
    found = capabilities()
    return bf16_support({name for name, value in found.items() if value is True}, "torch.cpu.get_capabilities()")
