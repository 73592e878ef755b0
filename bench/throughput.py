"""Throughput: the runner's defaults vs TRL's defaults, same model shape, data and batch, on a GPU.

    python bench/throughput.py [--shapes tinyllama qwen05] [--modes full lora qlora] [--steps 30]
                               [--warmup 10] [--examples 1000] [--variant NAME=KEY=VALUE,...] [--out bench/results]

Per shape it writes, into a scratch directory, the model config (TinyLlama 1.1B or Qwen2 0.5B shape,
random weights), a word-level tokenizer (one token per word) and 1,000 examples whose lengths are
uniform in 128..2048 tokens. Then for every mode (full, LoRA r=16 all-linear, QLoRA NF4) it runs
bench/plain_trl_throughput.py (TRL's defaults) and this file's runner side (`run.prepare` on a recipe
that sets only what the TRL script sets, then the trainer it built), each in its own process, and
reads the `RESULT` line bench/meter.py prints: real tokens/s after `--warmup` steps, peak memory, MFU.
`--variant` adds runner rows with recipe overrides (e.g. `ckpt_off=training.activation_checkpointing=false`).
QLoRA on the runner side needs `model.quantization` (issue 4); where the schema lacks it the row says so.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHAPES = {
    "tinyllama": {"model_type": "llama", "hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22,
                  "num_attention_heads": 32, "num_key_value_heads": 4, "vocab_size": 32000,
                  "max_position_embeddings": 2048, "rope_theta": 10000.0, "rms_norm_eps": 1e-5,
                  "tie_word_embeddings": False},
    "qwen05": {"model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
               "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
               "max_position_embeddings": 32768, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
               "tie_word_embeddings": True, "use_sliding_window": False},
    # a smoke test of the harness itself on a CPU
    "tiny": {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1024, "max_position_embeddings": 2048,
             "tie_word_embeddings": False},
}
LORA = {"method": "lora", "r": 16, "lora_alpha": 32, "target_modules": "all-linear"}


def make_assets(folder: Path, shape: str, examples: int, seed: int, weights: bool) -> None:
    """Model config (and random weights for QLoRA, which must load from disk), tokenizer, data."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoConfig, PreTrainedTokenizerFast

    spec = dict(SHAPES[shape])
    model_dir = folder / "model"
    AutoConfig.for_model(spec.pop("model_type"), **spec).save_pretrained(model_dir)
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3, **{f"w{i}": i for i in range(4, spec["vocab_size"])}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                            pad_token="<pad>").save_pretrained(model_dir)
    rng = random.Random(seed)
    with open(folder / "train.jsonl", "w") as out:
        for _ in range(examples):  # n words + the EOS TRL appends = n + 1 tokens, uniform in 128..2048
            words = rng.randint(127, 2047)
            out.write(json.dumps({"text": " ".join(f"w{rng.randrange(4, 1000)}" for _ in range(words))}) + "\n")
    if weights:
        import torch
        from transformers import AutoModelForCausalLM

        AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir), dtype=torch.bfloat16) \
            .save_pretrained(model_dir)


def runner_recipe(assets: Path, mode: str, steps: int, overrides: dict) -> dict:
    """What the TRL script sets, and nothing else: the runner decides the rest."""
    model = {"name_or_path": str(assets / "model"), "init": "pretrained" if mode == "qlora" else "random"}
    if mode == "qlora":
        model["quantization"] = {"method": "bnb_4bit", "bnb_4bit_quant_type": "nf4",
                                 "bnb_4bit_compute_dtype": "bfloat16"}
    recipe = {"name": f"bench-{mode}", "task": "sft", "model": model,
              "data": {"format": "text", "train": {"path": str(assets / "train.jsonl")}},
              "peft": LORA if mode != "full" else {"method": "none"},
              "training": {"per_device_train_batch_size": 8, "max_length": 2048, "max_steps": steps,
                           "logging_steps": 10, "save_strategy": "no"},
              "output": {"dir": str(assets / f"out-runner-{mode}"), "if_exists": "overwrite"}}
    for key, value in overrides.items():
        section, name = key.split(".", 1)
        recipe[section][name] = value
    return recipe


def runner_worker(assets: str, mode: str, steps: int, warmup: int, overrides: str) -> None:
    """The runner side, in its own process: plan, prepare (data, model, trainer, fast defaults), train."""
    started = time.perf_counter()
    prepared, meter, first = metered_runner(assets, mode, steps, warmup, json.loads(overrides), started)
    prepared.trainer.train()
    from meter import report  # on the path metered_runner set

    report({"side": "runner", "mode": mode, "decided": decided(prepared), **meter.result(prepared.trainer.model)},
           started, first.at)


def metered_runner(assets: str, mode: str, steps: int, warmup: int, overrides: dict, started: float):
    """(the runner's prepared run, its token meter, its first-step clock) for `mode`'s recipe, ready to train."""
    sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
    from meter import FirstStep, TokenMeter
    from runner.plan import build as plan_module
    from runner.commands import run
    from runner.recipe.load import load_recipe

    compatible_with_older_transformers()
    recipe = runner_recipe(Path(assets), mode, steps, overrides)
    path = Path(assets) / f"recipe-{mode}.json"
    path.write_text(json.dumps(recipe, indent=2))
    prepared = run.prepare(plan_module.build_plan(load_recipe(str(path))))
    meter, first = TokenMeter(prepared.trainer.model, warmup), FirstStep(started)
    prepared.trainer.add_callback(meter)
    prepared.trainer.add_callback(first)
    return prepared, meter, first


def decided(prepared) -> dict:
    """The fast defaults the runner decided on this machine, by recipe path."""
    return {p: s.get("value") for p, s in prepared.plan["fast_defaults"]["settings"].items() if "value" in s}


def compatible_with_older_transformers() -> None:
    """The lent GPU has transformers 5.17, from before `gradient_checkpointing` became `activation_checkpointing`
    (the runner needs >= 5.23): rename the key for such a version, so the bench runs there unchanged otherwise."""
    import dataclasses

    from runner.train import trainer
    from trl import SFTConfig

    if "activation_checkpointing" in {f.name for f in dataclasses.fields(SFTConfig)}:
        return
    original = trainer.launch_config

    def renamed(plan, hardware):
        config = original(plan, hardware)
        if "activation_checkpointing" in config:
            config["gradient_checkpointing"] = config.pop("activation_checkpointing")
        return config

    trainer.launch_config = renamed


def measure(command: list[str], log) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    process = subprocess.run(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log.write(f"$ {' '.join(command)}\n{process.stdout}\n")
    log.flush()
    found = [line for line in process.stdout.splitlines() if line.startswith("RESULT ")]
    if process.returncode != 0 or not found:
        tail = process.stdout.strip().splitlines()[-3:]
        return {"error": f"exit {process.returncode}: {' | '.join(tail)[-600:]}"}
    return json.loads(found[-1][len("RESULT "):])


def quantization_in_schema() -> bool:
    schema = json.loads((ROOT / "schemas" / "recipe.schema.json").read_text())
    return "quantization" in schema["$defs"]["model"]["properties"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", nargs="+", default=["tinyllama", "qwen05"])
    parser.add_argument("--modes", nargs="+", default=["full", "lora", "qlora"])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--variant", action="append", default=[],
                        help="NAME=KEY=VALUE[,KEY=VALUE]: an extra runner row with recipe overrides (JSON values)")
    parser.add_argument("--sides", nargs="+", default=["trl", "runner"])
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    variants = {"defaults": {}}
    for spec in args.variant:
        name, _, pairs = spec.partition("=")
        variants[name] = {k: json.loads(v) for k, v in (pair.split("=", 1) for pair in pairs.split(","))}
    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as scratch, open(out / "throughput.log", "w") as log:
        for shape in args.shapes:
            assets = Path(scratch) / shape
            make_assets(assets, shape, args.examples, seed=0, weights="qlora" in args.modes)
            for mode in args.modes:
                if "trl" in args.sides:
                    command = [sys.executable, "bench/plain_trl_throughput.py", str(assets), mode, str(args.steps),
                               str(args.warmup)]
                    rows.append({"shape": shape, "mode": mode, "side": "trl", "variant": "TRL defaults",
                                 **measure(command, log)})
                    print(rows[-1], flush=True)
                for name, overrides in variants.items() if "runner" in args.sides else ():
                    if mode == "qlora" and not quantization_in_schema():
                        rows.append({"shape": shape, "mode": mode, "side": "runner", "variant": name,
                                     "error": "this branch's schema has no model.quantization (issue 4)"})
                        continue
                    command = [sys.executable, __file__, "--worker", str(assets), mode, str(args.steps),
                               str(args.warmup), json.dumps(overrides)]
                    rows.append({"shape": shape, "mode": mode, "side": "runner", "variant": name,
                                 **measure(command, log)})
                    print(rows[-1], flush=True)
                    save(out, args, rows)  # after every row: a run cut short keeps what it measured
    save(out, args, rows)
    print(table(rows))


def save(out: Path, args, rows: list[dict]) -> None:
    record = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count()}, "steps": args.steps,
              "warmup": args.warmup, "examples": args.examples, "rows": rows, "versions": versions()}
    (out / "throughput.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / "throughput.md").write_text(table(rows) + "\n")


def table(rows: list[dict]) -> str:
    lines = ["| shape | mode | side | tokens/s | vs TRL | MFU (6N) | peak GiB | first step s |",
             "|---|---|---|---|---|---|---|---|"]
    base = {(r["shape"], r["mode"]): r.get("tokens_per_s") for r in rows if r["side"] == "trl"}
    for r in rows:
        side = r["side"] if r["side"] == "trl" else f"runner ({r['variant']})"
        if "error" in r:
            lines.append(f"| {r['shape']} | {r['mode']} | {side} | - | - | - | - | {r['error'][:120]} |")
            continue
        ref = base.get((r["shape"], r["mode"]))
        ratio = f"{r['tokens_per_s'] / ref:.2f}x" if ref else "-"
        lines.append(f"| {r['shape']} | {r['mode']} | {side} | {r['tokens_per_s']:,.0f} | {ratio} | "
                     f"{r.get('mfu_6n', 0):.1%} | {r.get('peak_gib', 0):.1f} | {r.get('first_step_s') or 0:.1f} |")
    return "\n".join(lines)


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "bitsandbytes", "liger-kernel"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        runner_worker(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6])
    else:
        main()
