"""Runner vs plain TRL, same model, data and steps, alternating; writes JSON and a markdown table.

    .venv/bin/python bench/overhead.py [--rounds 3] [--out bench/results]

Each side runs as its own process, as a user runs it. Measured from the outside, identically for
both: wall time, time from process start to the first logged step (the `{'loss': ...}` line that
`logging_first_step` prints), and transformers' own `train_samples_per_second` (same data and
steps on both sides, so the samples/s ratio is the tokens/s ratio). On a machine with a GPU both sides
train on it: the recipe pins every launch-time fast default to the plain script's settings.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
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


def measure(command: list[str]) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
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
    return {"wall_s": time.perf_counter() - start, "first_step_s": first_step, "samples_per_s": samples}


def machine() -> dict:
    import torch  # both sides train on the GPU when there is one (the recipe pins the fast defaults to the plain script's)

    return {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    runs = {side: [] for side in SIDES}
    with tempfile.TemporaryDirectory() as scratch:
        for round_ in range(args.rounds):
            # alternate, and swap the order every round (ABBA), so drift in machine load hits both sides alike
            for side in (SIDES if round_ % 2 == 0 else reversed(list(SIDES))):
                result = measure(SIDES[side](str(Path(scratch) / f"{side}-{round_}")))
                runs[side].append(result)
                print(side, round_, result, flush=True)
    summary = {side: {k: statistics.median(r[k] for r in results) for k in results[0]}
               for side, results in runs.items()}
    ratio = summary["runner"]["samples_per_s"] / summary["plain_trl"]["samples_per_s"]
    extra = summary["runner"]["first_step_s"] - summary["plain_trl"]["first_step_s"]
    # each round's two runs are neighbours in time: their ratio is the least disturbed by slow drift
    pair_ratios = [r["samples_per_s"] / p["samples_per_s"] for r, p in zip(runs["runner"], runs["plain_trl"])]
    pair_extra = [r["first_step_s"] - p["first_step_s"] for r, p in zip(runs["runner"], runs["plain_trl"])]
    record = {"machine": machine(), "rounds": args.rounds,
              "runs": runs, "median": summary, "throughput_ratio": ratio, "extra_time_to_first_step_s": extra,
              "pair_ratios": pair_ratios, "median_pair_ratio": statistics.median(pair_ratios),
              "median_pair_extra_first_step_s": statistics.median(pair_extra)}
    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "overhead.json").write_text(json.dumps(record, indent=2) + "\n")
    table = ["| side | samples/s (median) | time to first step s | wall s |", "|---|---|---|---|"]
    table += [f"| {side} | {s['samples_per_s']:.1f} | {s['first_step_s']:.2f} | {s['wall_s']:.2f} |"
              for side, s in summary.items()]
    table += ["", f"throughput ratio runner / plain TRL: {ratio:.3f} (ratio of medians), "
                  f"{statistics.median(pair_ratios):.3f} (median of the {len(pair_ratios)} per-round ratios: "
                  f"{', '.join(f'{r:.3f}' for r in pair_ratios)}); extra time to first step: {extra:+.2f} s "
                  f"(median per round {statistics.median(pair_extra):+.2f} s)"]
    (out / "overhead.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()
