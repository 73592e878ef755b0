"""Wall time of `validate` and `plan` (subprocesses, as a user runs them); JSON and markdown out.

    .venv/bin/python bench/timing.py [--repeat 10] [--out bench/results]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    rows = {}
    for recipe in sorted((ROOT / "recipes").glob("*.json")):
        for command in ("validate", "plan"):
            times = []
            for _ in range(args.repeat):
                start = time.perf_counter()
                subprocess.run([sys.executable, "-m", "runner", command, str(recipe)], cwd=ROOT, check=True,
                               capture_output=True)
                times.append(time.perf_counter() - start)
            rows[f"{command} {recipe.name}"] = {"median_s": statistics.median(times), "max_s": max(times)}
    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "timing.json").write_text(json.dumps(rows, indent=2) + "\n")
    table = ["| command | median s | max s |", "|---|---|---|"]
    table += [f"| {name} | {r['median_s']:.3f} | {r['max_s']:.3f} |" for name, r in rows.items()]
    (out / "timing.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()
