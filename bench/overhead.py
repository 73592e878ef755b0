"""Runner vs plain TRL, same model, data and steps, alternating; writes JSON and a markdown table.

    .venv/bin/python bench/overhead.py [--rounds 3] [--out bench/results]                       # tiny model
    .venv/bin/python bench/overhead.py --model smollm2 --compare equal [--rounds 2] [--steps 10] [--work DIR]
    .venv/bin/python bench/overhead.py --model smollm2 --compare defaults [--rounds 2] [--steps 10] [--work DIR]

Each side runs as its own process, as a user runs it, alternating and swapping the order every round
(ABBA). Measured from the outside, identically for both: wall time, time from process start to the first
logged step (the `{'loss': ...}` line that `logging_first_step` prints), and transformers' own
`train_samples_per_second` (same data and steps on both sides, so the samples/s ratio is the tokens/s ratio).

- tiny (default): bench/recipes/overhead.json against bench/plain_trl_sft.py, every launch-time setting pinned
  to the plain script's (fp32), so on a GPU too both sides run the same computation.
- smollm2: real weights (SmolLM2-135M-Instruct, converted once into --work by bench/smollm2.py), LoRA, batch 4 x
  128, bench/recipes/smollm2_lora.json against bench/plain_trl_smollm2.py.
  --compare equal: every setting equal, precision included: the runner with training.bf16 set to what it
  decides on this machine, the plain script with all the runner's resolved settings spelled out and that
  precision. Target: runner >= 0.98x plain TRL's samples/s, the same loss curve.
  --compare defaults: each side's own defaults (the runner's launch-time decisions vs SFTConfig's). Target >= 1.0x.
  Both sides' accelerator.mixed_precision is printed (the runner's from run.json).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SIDES = {
    "runner": lambda out: [sys.executable, "-m", "runner", "bench/recipes/overhead.json", "--set", f"output.dir={out}"],
    "plain_trl": lambda out: [sys.executable, "bench/plain_trl_sft.py", out],
}
SAMPLES_PER_SECOND = re.compile(r"'train_samples_per_second': '?([0-9.e+-]+)")


def smollm2_sides(work: Path, steps: int, compare: str) -> dict:
    """The two commands for the real model; equal settings pin the runner's precision to its own decision here."""
    sys.path[:0] = [str(ROOT), str(ROOT / "bench")]  # this checkout's runner (the one the runner side runs)
    import smollm2

    from runner.launch.machine import hardware

    model = smollm2.convert(work / "smollm2")
    rows = smollm2.write_rows(work / "alpaca.jsonl", 4 * steps)
    bf16 = hardware()["bf16"]  # what training.bf16: null decides on this machine (a CPU: its native bf16 flag)
    runner = ["--set", f"model.name_or_path={model}", "--set", f"data.train.path={rows}",
              "--set", f"training.max_steps={steps}"]
    if compare == "equal":
        runner += ["--set", f"training.bf16={json.dumps(bf16)}"]
    plain_mode = ("bf16" if bf16 else "fp32") if compare == "equal" else "defaults"
    return {
        "runner": lambda out: [sys.executable, "-m", "runner", "bench/recipes/smollm2_lora.json", *runner,
                               "--set", f"output.dir={out}"],
        "plain_trl": lambda out: [sys.executable, "bench/plain_trl_smollm2.py", str(model), str(rows), out,
                                  str(steps), plain_mode],
    }


def measure(command: list[str], out: str, threads: int | None = None) -> dict:
    """Wall figures, plus the CPU seconds the process used (all threads, imports included): on a shared machine
    other users' load stretches wall time many-fold, CPU seconds far less (it still counts threads spinning).
    threads: OMP_NUM_THREADS for the side (both alike); 1 leaves no OpenMP barrier for others' load to stall."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    used = resource.getrusage(resource.RUSAGE_CHILDREN)  # one child at a time: the difference is this one's
    start = time.perf_counter()
    first_step, samples = None, None
    with subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True) as process:
        for line in process.stdout:
            if first_step is None and "{'loss'" in line:
                first_step = time.perf_counter() - start
            found = SAMPLES_PER_SECOND.search(line)
            if found:
                samples = float(found.group(1))
    if process.returncode != 0:
        raise SystemExit(f"{command} failed with exit code {process.returncode}")
    wall, now = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = now.ru_utime + now.ru_stime - used.ru_utime - used.ru_stime
    return {"wall_s": wall, "cpu_s": cpu, "first_step_s": first_step, "samples_per_s": samples, **records(Path(out))}


def records(out: Path) -> dict:
    """The loss curve and the accelerator's mixed precision, from run.json (runner) or plain.json (plain script)."""
    for name in ("run.json", "plain.json"):
        if (out / name).is_file():
            found = json.loads((out / name).read_text())
            return {"mixed_precision": found.get("mixed_precision"),
                    "losses": [h["loss"] for h in found["history"] if "loss" in h]}
    return {}


def machine() -> dict:
    import torch  # both sides train on the GPU when there is one (the recipe pins the fast defaults to the plain script's)

    return {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}


def run_rounds(sides: dict, rounds: int, scratch: str, threads: int | None = None) -> dict:
    runs = {side: [] for side in sides}
    for round_ in range(rounds):
        # alternate, and swap the order every round (ABBA), so drift in machine load hits both sides alike
        for side in (sides if round_ % 2 == 0 else reversed(list(sides))):
            out = str(Path(scratch) / f"{side}-{round_}")
            result = measure(sides[side](out), out, threads)
            runs[side].append(result)
            print(side, round_, {k: v for k, v in result.items() if k != "losses"}, flush=True)
    return runs


def summarise(runs: dict, args) -> tuple[dict, list[str]]:
    keys = ("wall_s", "cpu_s", "first_step_s", "samples_per_s")
    summary = {side: {k: statistics.median(r[k] for r in results) for k in keys} for side, results in runs.items()}
    ratio = summary["runner"]["samples_per_s"] / summary["plain_trl"]["samples_per_s"]
    extra = summary["runner"]["first_step_s"] - summary["plain_trl"]["first_step_s"]
    # each round's two runs are neighbours in time: their ratio is the least disturbed by slow drift
    pair_ratios = [r["samples_per_s"] / p["samples_per_s"] for r, p in zip(runs["runner"], runs["plain_trl"])]
    pair_extra = [r["first_step_s"] - p["first_step_s"] for r, p in zip(runs["runner"], runs["plain_trl"])]
    pair_cpu = [p["cpu_s"] / r["cpu_s"] for r, p in zip(runs["runner"], runs["plain_trl"])]  # > 1: runner used less
    record = {"machine": machine(), "model": args.model, "compare": args.compare, "rounds": args.rounds,
              "threads": args.threads,
              "runs": runs, "median": summary, "throughput_ratio": ratio, "extra_time_to_first_step_s": extra,
              "pair_ratios": pair_ratios, "median_pair_ratio": statistics.median(pair_ratios),
              "median_pair_extra_first_step_s": statistics.median(pair_extra),
              "pair_cpu_ratios_plain_over_runner": pair_cpu}
    table = ["| side | samples/s (median) | time to first step s | wall s | CPU s | mixed precision |",
             "|---|---|---|---|---|---|"]
    table += [f"| {side} | {s['samples_per_s']:.2f} | {s['first_step_s']:.2f} | {s['wall_s']:.2f} | {s['cpu_s']:.1f} | "
              f"{runs[side][0].get('mixed_precision', '?')} |" for side, s in summary.items()]
    table += ["", f"throughput ratio runner / plain TRL: {ratio:.3f} (ratio of medians), "
                  f"{statistics.median(pair_ratios):.3f} (median of the {len(pair_ratios)} per-round ratios: "
                  f"{', '.join(f'{r:.3f}' for r in pair_ratios)}); extra time to first step: {extra:+.2f} s "
                  f"(median per round {statistics.median(pair_extra):+.2f} s); CPU seconds plain / runner per round: "
                  f"{', '.join(f'{r:.3f}' for r in pair_cpu)}"]
    curves = [(r.get("losses"), p.get("losses")) for r, p in zip(runs["runner"], runs["plain_trl"])]
    if all(a and b and len(a) == len(b) for a, b in curves):
        record["max_abs_loss_diff_per_round"] = [max(abs(x - y) for x, y in zip(a, b)) for a, b in curves]
        table.append(f"loss curves, runner vs plain TRL, largest per-step difference per round: "
                     f"{', '.join(f'{d:.4f}' for d in record['max_abs_loss_diff_per_round'])} "
                     f"(runner {', '.join(f'{x:.4f}' for x in curves[0][0])}; "
                     f"plain {', '.join(f'{x:.4f}' for x in curves[0][1])})")
    return record, table


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=("tiny", "smollm2"), default="tiny")
    parser.add_argument("--compare", choices=("equal", "defaults"), default="equal",
                        help="smollm2 only: every setting equal (precision included), or each side's defaults")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10, help="smollm2 only: optimizer steps per run")
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "recipe-runner-bench"),
                        help="smollm2 only: where the converted model and the rows are kept")
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS for both sides (default: the libraries' choice)")
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    sides = SIDES if args.model == "tiny" else smollm2_sides(Path(args.work), args.steps, args.compare)
    with tempfile.TemporaryDirectory() as scratch:
        runs = run_rounds(sides, args.rounds, scratch, args.threads)
    record, table = summarise(runs, args)
    name = ("overhead" if args.model == "tiny" else f"overhead_{args.model}_{args.compare}") \
        + (f"_{args.threads}t" if args.threads else "")
    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / f"{name}.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()
