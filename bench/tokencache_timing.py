"""How long the runner spends preparing a run (data, tokenizer, model, trainer with its tokenized data),
with the tokenization cache off, cold and warm.

    python bench/tokencache_timing.py --rows 20000 --format messages

Each case is a fresh process (imports excluded from the time) sharing one HF_HOME, as successive runs
of one user would: `off` twice (the second may reuse datasets' own map cache files, keyed by
fingerprints), then `cold` (cache empty: tokenize and store) and `warm` (load the stored datasets).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHILD = """
import json, sys, time
from runner.data import tokencache
from runner.plan.build import build_plan
from runner.recipe.load import load_recipe
from runner.commands.run import prepare
import trl, transformers  # imported before the clock starts
started = time.perf_counter()
prepare(build_plan(load_recipe(sys.argv[1])))
print(json.dumps({"seconds": time.perf_counter() - started, **tokencache.STATS}))
"""


def rows(count: int, fmt: str) -> list[dict]:
    sys.path.insert(0, str(ROOT / "tests"))
    from assets import reverse_rows

    base = reverse_rows(count, seed=1)
    if fmt == "prompt_completion":
        return base
    return [{"messages": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["completion"]}]}
            for r in base]


def main(argv=None) -> None:
    top = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    top.add_argument("--rows", type=int, default=20000)
    top.add_argument("--format", default="messages", choices=["messages", "prompt_completion"])
    args = top.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="tokencache-bench-"))
    data = work / "data"
    data.mkdir()
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows(args.rows, args.format)))
    env = {**os.environ, "HF_HOME": str(work / "hf"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "PYTHONPATH": str(ROOT), "RECIPE_RUNNER_CACHE": str(work / "cache")}
    results = []
    for case, cache in (("off", False), ("off, again", False), ("cold", None), ("warm", None)):
        recipe = {"name": "bench", "model": {"name_or_path": str(ROOT / "recipes/assets/tiny-llama"), "init": "random"},
                  "data": {"format": args.format, "train": {"path": str(data / "train.jsonl")},
                           "tokenization_cache": cache},
                  "training": {"max_steps": 1, "max_length": 128, "save_strategy": "no"},
                  "output": {"dir": str(work / "run")}}
        (work / "recipe.json").write_text(json.dumps(recipe))
        out = subprocess.run([sys.executable, "-c", CHILD, str(work / "recipe.json")], env=env, cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout
        results.append((case, json.loads(out.strip().splitlines()[-1])))
    print(f"{args.rows} {args.format} rows, tiny-llama tokenizer, max_length 128\n")
    print("| cache | prepare() s | cache hits | misses |\n|---|---|---|---|")
    for case, r in results:
        print(f"| {case} | {r['seconds']:.2f} | {r['hits']} | {r['misses']} |")


if __name__ == "__main__":
    main()
