"""Shared by the phases of bench/h200_check.sh: the deadline, child processes that can be stopped as a group,
result files that survive a phase killed half-way, and the runner's own memory estimate for a prepared run.

Environment (set by h200_check.sh):
    H200_RES          folder of per-phase JSON results (default /tmp/h200/res); h200_collect.py merges it into $OUT
    H200_PHASE_END    epoch seconds by which this phase must be done (the script's deadline or the phase's cap)
    H200_ROWS_LOG     file that receives every child process's whole output (default: H200_RES/../rows.log)
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RES = Path(os.environ.get("H200_RES", "/tmp/h200/res"))
BASE_PARAMETERS_1B = 1_100_048_384  # the TinyLlama-1.1B shape (bench/throughput.py SHAPES["tinyllama"])
PEAK_BF16 = 989e12  # H100/H200 SXM dense bf16, the MFU basis

_child: subprocess.Popen | None = None


def remaining() -> float:
    end = float(os.environ.get("H200_PHASE_END", time.time() + 3600))
    return end - time.time()


def save(name: str, record: dict) -> None:
    """RES/name.json, written atomically, then merged into $OUT (so a kill right after loses nothing)."""
    RES.mkdir(parents=True, exist_ok=True)
    tmp = RES / f".{name}.json.tmp"
    tmp.write_text(json.dumps(record, indent=2, default=str) + "\n")
    tmp.replace(RES / f"{name}.json")
    collect = Path(__file__).with_name("h200_collect.py")
    subprocess.run([sys.executable, str(collect)], check=False)


def load(name: str) -> dict | None:
    path = RES / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _stop_child(signum, frame):  # the phase's timeout: stop the row's whole process group, then go
    if _child is not None and _child.poll() is None:
        try:
            os.killpg(_child.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    raise SystemExit(f"stopped by signal {signum}")


def stop_children_on_sigterm() -> None:
    """A driver's SIGTERM (the phase's `timeout`) also stops the child it is running (its own process group)."""
    signal.signal(signal.SIGTERM, _stop_child)


def run(command: list[str], timeout: float, env: dict | None = None, label: str = "") -> tuple[int | None, str]:
    """Run a child in its own process group (its dataloader workers and launchers with it), its output appended to
    the rows log and kept; killed as a group after `timeout` seconds (returns None as the exit code then)."""
    global _child
    log_path = Path(os.environ.get("H200_ROWS_LOG", RES.parent / "rows.log"))
    log_path.parent.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                **(env or {})}
    lines: list[str] = []
    with open(log_path, "a") as log:
        log.write(f"\n===== {label} $ {' '.join(command)} (timeout {timeout:.0f} s)\n")
        log.flush()
        _child = subprocess.Popen(command, cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, errors="replace", start_new_session=True)

        def pump(stream):
            for line in stream:
                lines.append(line)
                log.write(line)
                log.flush()

        reader = threading.Thread(target=pump, args=(_child.stdout,), daemon=True)
        reader.start()
        try:
            code = _child.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            code = None
        try:  # on a timeout the whole group; after a normal exit, anything it left running (workers, launchers)
            os.killpg(_child.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        _child.wait()
        reader.join(timeout=10)
        if code is None:
            log.write(f"===== {label}: killed after {timeout:.0f} s\n")
        _child = None
    return code, "".join(lines)


def result_line(output: str, prefix: str = "RESULT ") -> dict | None:
    found = [line for line in output.splitlines() if line.startswith(prefix)]
    return json.loads(found[-1][len(prefix):]) if found else None


def tail(output: str, lines: int = 4) -> str:
    return " | ".join(output.strip().splitlines()[-lines:])[-700:]


def capture_memory_estimate() -> dict:
    """Wrap runner.plan.decisions.memory_as_decided (called by the launch-time rules) so the estimate the runner
    itself made for the settings it decided is kept: per_device_gib with checkpointing on and off."""
    from runner.plan import decisions

    seen: dict = {}
    original = decisions.memory_as_decided

    def wrapped(plan, decided, bf16, padding_free):
        memory = original(plan, decided, bf16, padding_free)
        if memory:
            seen["memory"] = memory
        return memory

    decisions.memory_as_decided = wrapped
    return seen


def estimate_peak_gib(seen: dict, checkpointing: bool) -> dict:
    """Peak allocated GiB the runner estimated (its per_device_gib less the allocator slack and CUDA context)."""
    from runner.plan import memory

    found = (seen.get("memory") or {}).get("per_device_gib") or {}
    need = found.get(f"activation_checkpointing_{'on' if checkpointing else 'off'}")
    if need is None:
        return {"estimate_peak_gib": None, "estimate_why": (seen.get("memory") or {}).get("why", "no estimate")}
    return {"estimate_peak_gib": round((need - memory.CONTEXT_GIB) / (1 + memory.ALLOCATOR_SLACK), 3),
            "estimate_per_device_gib": need, "estimate_for": seen["memory"].get("decided_for")}


def training_args(args) -> dict:
    """The trainer's arguments that decide what is computed, for a side-by-side diff of two runs."""
    keep = ("bf16", "fp16", "activation_checkpointing", "gradient_checkpointing", "optim", "learning_rate",
            "lr_scheduler_type", "warmup_steps", "weight_decay", "max_grad_norm", "seed", "data_seed",
            "per_device_train_batch_size", "gradient_accumulation_steps", "max_length", "packing",
            "packing_strategy", "padding_free", "pad_to_multiple_of", "use_liger_kernel", "dataloader_num_workers",
            "completion_only_loss", "assistant_only_loss", "loss_type", "adam_beta1", "adam_beta2", "adam_epsilon",
            "dataloader_drop_last", "group_by_length", "neftune_noise_alpha", "average_tokens_across_devices")
    out = {}
    for key in keep:
        if hasattr(args, key):
            value = getattr(args, key)
            out[key] = value if isinstance(value, (bool, int, float, str, type(None))) else str(value)
    return out
