"""bf16 autocast vs fp32 on this CPU, on real weights: seconds per step and the loss curve.

    .venv/bin/python bench/cpu_precision.py trl [--steps 12] [--rounds 2] [--work DIR] [--out bench/results]
    .venv/bin/python bench/cpu_precision.py steps [--steps 12] [--work DIR] [--out bench/results]

The measurement behind the CPU rule for `training.bf16: null` (runner/launch/decide.py, runner/launch/cpu.py). LoRA (r 16,
all linear layers) on SmolLM2-135M-Instruct (bench/smollm2.py converts it once into --work), batch 4 x
max_length 128, the same rows and seed on both sides.
- trl: plain TRL as a user runs it (bench/plain_trl_smollm2.py, every setting spelled out, only `bf16`
  differing), one process per run, alternating fp32 / bf16 / bf16 / fp32 ... (ABBA) so drift in the load of a
  shared machine hits both alike. Per run: seconds per step after the first (bench/meter.py), the process's
  wall time, the per-step training loss.
- steps: one process holding both sides (two copies of the model, each with its own AdamW), their steps
  interleaved ABBA, so the load of a shared machine hits both within seconds; forward, backward and optimizer
  step timed per step, with torch.autocast(cpu, bf16) on one side.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
import smollm2  # noqa: E402


def cpu_flags() -> list[str]:
    """The bf16-related CPU flags the kernel reports (Linux), for the record."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith(("flags", "Features"))), [])
    return sorted(f for f in flags if "bf16" in f or f.startswith("amx"))


def machine() -> dict:
    import torch

    return {"platform": platform.platform(), "cpus": os.cpu_count(), "cpu_flags": cpu_flags(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "env": {k: v for k, v in os.environ.items()
                                                        if k in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "OMP_NUM_THREADS")}}


def run_plain(model: Path, rows: Path, out: Path, steps: int, mode: str) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    started = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "bench" / "plain_trl_smollm2.py"), str(model), str(rows), str(out),
                    str(steps), mode], cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - started
    found = json.loads((out / "plain.json").read_text())
    meter = found["meter"]
    return {"mode": mode, "mixed_precision": found["mixed_precision"], "wall_s": wall,
            "s_per_step": meter["seconds"] / meter["measured_steps"],
            "losses": [h["loss"] for h in found["history"] if "loss" in h]}


def interleaved(model_dir: Path, rows: Path, steps: int) -> dict:
    """Both precisions in one process, step by step in ABBA order (see the module docstring)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    texts = [r["prompt"] + r["completion"] for r in map(json.loads, rows.read_text().splitlines())]
    batches = [tokenizer(texts[i:i + 4], truncation=True, max_length=128, padding=True, return_tensors="pt")
               for i in range(0, 4 * steps, 4)]

    def side():
        torch.manual_seed(42)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32),
                               LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                                          task_type="CAUSAL_LM")).train()
        return model, torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)

    sides = {"fp32": side(), "bf16": side()}
    seconds, cpu_seconds, losses = {m: [] for m in sides}, {m: [] for m in sides}, {m: [] for m in sides}
    for i, batch in enumerate(batches):
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        for mode in (("fp32", "bf16") if i % 2 == 0 else ("bf16", "fp32")):
            model, optimizer = sides[mode]
            started, cpu_started = time.perf_counter(), time.process_time()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16"):
                loss = model(**batch, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            seconds[mode].append(time.perf_counter() - started)
            cpu_seconds[mode].append(time.process_time() - cpu_started)  # all threads; less stretched by others' load
            losses[mode].append(loss.item())
        print(i, {m: round(s[-1], 2) for m, s in seconds.items()}, {m: round(v[-1], 4) for m, v in losses.items()},
              flush=True)
    pairs = [a / b for a, b in zip(seconds["fp32"][1:], seconds["bf16"][1:])]  # the first step of each is warm-up
    cpu_pairs = [a / b for a, b in zip(cpu_seconds["fp32"][1:], cpu_seconds["bf16"][1:])]
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "losses": losses, "fp32_over_bf16_per_step": pairs,
            "median_s_per_step": {m: statistics.median(s[1:]) for m, s in seconds.items()},
            "median_cpu_s_per_step": {m: statistics.median(s[1:]) for m, s in cpu_seconds.items()},
            "median_pair_ratio": statistics.median(pairs), "median_cpu_pair_ratio": statistics.median(cpu_pairs),
            "max_abs_loss_diff": max(abs(a - b) for a, b in zip(losses["fp32"], losses["bf16"]))}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("trl", "steps"))
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=2, help="each round runs both sides; odd rounds swap the order")
    parser.add_argument("--threads", type=int, help="steps only: torch.set_num_threads (1: no OpenMP barrier for other "
                                                    "users' load to stall, so both sides are slowed alike)")
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "recipe-runner-bench"))
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    work = Path(args.work)
    model = smollm2.convert(work / "smollm2")
    rows = smollm2.write_rows(work / "alpaca.jsonl", 4 * args.steps)
    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    if args.mode == "steps":
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        record = {"machine": machine(), "steps": args.steps, **interleaved(model, rows, args.steps)}
        isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "")
        name = "cpu_precision_steps" + (f"_{isa.lower()}" if isa else "") + (f"_{args.threads}t" if args.threads else "")
        (out / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
        print(json.dumps({k: v for k, v in record.items() if k not in ("seconds", "cpu_seconds", "losses")}, indent=2))
        return
    runs = []
    for round_ in range(args.rounds):
        for mode in (("fp32", "bf16") if round_ % 2 == 0 else ("bf16", "fp32")):
            runs.append(run_plain(model, rows, work / f"precision-{mode}-{round_}", args.steps, mode))
            print(json.dumps(runs[-1]), flush=True)
    summary = {}
    for mode in ("fp32", "bf16"):
        mine = [r for r in runs if r["mode"] == mode]
        summary[mode] = {"s_per_step": [round(r["s_per_step"], 3) for r in mine],
                         "wall_s": [round(r["wall_s"], 1) for r in mine], "mixed_precision": mine[0]["mixed_precision"]}
    fp32, bf16 = runs[0]["losses"], next(r for r in runs if r["mode"] == "bf16")["losses"]
    record = {"machine": machine(), "steps": args.steps, "runs": runs, "summary": summary,
              "speedup_s_per_step": statistics.median(summary["fp32"]["s_per_step"])
              / statistics.median(summary["bf16"]["s_per_step"]),
              "speedup_wall": statistics.median(summary["fp32"]["wall_s"]) / statistics.median(summary["bf16"]["wall_s"]),
              "max_abs_loss_diff": max(abs(a - b) for a, b in zip(fp32, bf16))}
    threads = os.environ.get("OMP_NUM_THREADS")
    (out / f"cpu_precision_trl{'_' + threads + 't' if threads else ''}.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({k: v for k, v in record.items() if k != "runs"}, indent=2))


if __name__ == "__main__":
    main()
