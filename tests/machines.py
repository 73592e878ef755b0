"""Machines as the rules see them (what runner.launch.machine probes), for the decision tests of every tier."""
from __future__ import annotations

from runner.launch import cpu

H100 = {"gpus": 1, "gpu_memory_gib": 79.2, "bf16": True, "cpus": 16, "varlen": True, "liger": True}

CPU = {"gpus": 0, "gpu_memory_gib": None, "bf16": False, "cpus": 2, "varlen": False, "liger": False,
       "cpu_bf16": {"native": False, "feature": None, "source": "/proc/cpuinfo"}}


# /proc/cpuinfo as Linux writes it (one block per logical CPU), shortened to the lines that matter
EPYC_ZEN4 = ("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx avx2 avx512f "
             "avx512bw avx512_vnni avx512_bf16 avx512_vbmi2\n\nprocessor\t: 1\nflags\t\t: fpu sse2 avx avx2 avx512f "
             "avx512bw avx512_vnni avx512_bf16 avx512_vbmi2\n")

SAPPHIRE_RAPIDS = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_vnni amx_bf16 amx_tile amx_int8\n"

SKYLAKE = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 avx512f avx512bw avx512vl\n"  # AVX-512 without BF16

GRAVITON3 = "processor\t: 0\nBogoMIPS\t: 2100.00\nFeatures\t: fp asimd atomics sve svei8mm svebf16 i8mm bf16 rng\n"

GRAVITON2 = "processor\t: 0\nBogoMIPS\t: 243.75\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics\n"


def on_cpu(cpuinfo: str) -> dict:
    support = cpu.bf16_support(cpu.flags_in_cpuinfo(cpuinfo), "/proc/cpuinfo")
    return {**CPU, "bf16": support["native"], "cpu_bf16": support}
