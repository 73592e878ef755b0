"""One GPU, three engines: DeepSpeed ZeRO-2, ZeRO-3 and FSDP2 through the runner on a ~1.1B Llama.

    python bench/scale_gpu.py OUT_DIR [--steps 12] [--configs deepspeed_zero2,deepspeed_zero3,fsdp2] [--tiny] [--inputs DIR]

Builds a TinyLlama-1.1B-shaped config (random init, no download) and ~1,000-token rows of generated
text, writes one recipe, and runs it once per shipped Accelerate config with world size 1 through
`accelerate launch ... bench/scale_gpu.py --worker`: the runner's own prepare/train, plus a callback
timing optimizer steps after a warm-up and torch's peak allocated memory. Writes OUT_DIR/scale_gpu.json.
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TINYLLAMA = {  # TinyLlama-1.1B's shape (1.10B parameters)
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 32000, "hidden_size": 2048,
    "intermediate_size": 5632, "num_hidden_layers": 22, "num_attention_heads": 32, "num_key_value_heads": 4,
    "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False,
    "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu", "initializer_range": 0.02,
}
WARMUP = 3  # steps left out of the timing (allocator, autotuning)


def write_inputs(folder: Path, steps: int, shape: dict) -> Path:
    model = folder / "model"
    model.mkdir(parents=True, exist_ok=True)
    (model / "config.json").write_text(json.dumps(shape))
    rng = random.Random(0)
    rows = [{"text": "".join(rng.choice("abcdefghijklmnopqrstuvwxyz ") for _ in range(1000))}
            for _ in range(8 * steps)]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = {
        "name": "scale-gpu", "task": "pretrain",
        # the shipped byte-level tokenizer: one token per character, ids inside the 32,000-row embedding
        "model": {"name_or_path": str(model), "init": "random", "tokenizer": str(ROOT / "recipes/assets/tiny-llama")},
        "data": {"format": "text", "train": {"path": str(folder / "train.jsonl")}},
        "training": {"max_steps": steps, "per_device_train_batch_size": 8, "max_length": 1024, "bf16": True,
                     "learning_rate": 1e-4, "logging_steps": 1, "save_strategy": "no"},
        "output": {"dir": str(folder / "run"), "if_exists": "overwrite"},
    }
    path = folder / "recipe.json"
    path.write_text(json.dumps(recipe, indent=2))
    return path


def worker(recipe: str, result_file: str) -> None:
    """Inside `accelerate launch`: the runner's run, timed."""
    import torch
    from transformers import TrainerCallback

    from runner.plan.build import build_plan
    from runner.recipe.load import load_recipe
    from runner.commands.run import prepare, train
    from runner.plan.topology import from_environment

    times: list[float] = []

    cuda = torch.cuda.is_available()  # (a CPU run only checks that the script works)

    class StepClock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter())

    plan = with_checkpointing_name(build_plan(load_recipe(recipe), from_environment()))
    prepared = prepare(plan)
    prepared.trainer.add_callback(StepClock())
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    manifest = train(prepared.plan, prepared, ["bench"])
    tokens = [h["num_tokens"] for h in manifest["history"] if "num_tokens" in h]
    timed = len(times) - 1 - WARMUP
    per_step = (tokens[-1] - tokens[WARMUP]) / timed  # num_tokens is cumulative, logged every step
    print(json.dumps({"tokens_per_s": per_step * timed / (times[-1] - times[WARMUP]),
                      "s_per_step": (times[-1] - times[WARMUP]) / timed,
                      "peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
                      "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30 if cuda else None,
                      "parameters": manifest["parameters"], "topology": plan["topology"],
                      "final_loss": [h["loss"] for h in manifest["history"] if "loss" in h][-1],
                      "saved_files": sorted(p.name for p in Path(plan["output_dir"]).glob("*.safetensors")),
                      "gpu": manifest["hardware"]["gpus"], "versions": manifest["versions"]}),
          file=open(result_file, "w"))


def with_checkpointing_name(plan: dict) -> dict:
    """The GPU machine's transformers (5.17) still calls activation_checkpointing gradient_checkpointing."""
    import dataclasses

    from transformers import TrainingArguments

    config = dict(plan["trainer"]["config"])
    if "activation_checkpointing" in config and \
            "activation_checkpointing" not in {f.name for f in dataclasses.fields(TrainingArguments)}:
        config["gradient_checkpointing"] = config.pop("activation_checkpointing")
    return {**plan, "trainer": {**plan["trainer"], "config": config}}


def main(out: Path, steps: int, configs: list[str], shape: dict, inputs: Path | None = None) -> None:
    from runner.launch import launcher as launch

    out.mkdir(parents=True, exist_ok=True)
    recipe = write_inputs(inputs or out / "inputs", steps, shape)
    results = {}
    for name in configs:
        args = launch.launcher_args(launch.config_path(name, 1, 1), 1, 1)
        result_file = out / f"{name}.json"
        command = [sys.executable, "-m", "accelerate.commands.launch", *args, "--main_process_port", "29511",
                   __file__, "--worker", str(recipe), str(result_file)]
        started = time.perf_counter()
        with open(out / f"{name}.log", "w") as log:
            code = subprocess.call(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        results[name] = json.loads(result_file.read_text()) if code == 0 and result_file.is_file() else \
            {"failed": code, "log_tail": (out / f"{name}.log").read_text()[-3000:]}
        results[name]["wall_s"] = round(time.perf_counter() - started, 1)
        print(name, json.dumps(results[name])[:600], flush=True)
    (out / "scale_gpu.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    if sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3])
    else:
        steps = int(sys.argv[sys.argv.index("--steps") + 1]) if "--steps" in sys.argv else 12
        chosen = sys.argv[sys.argv.index("--configs") + 1].split(",") if "--configs" in sys.argv else \
            ["deepspeed_zero2", "deepspeed_zero3", "fsdp2"]
        tiny = {**TINYLLAMA, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2}
        inputs = Path(sys.argv[sys.argv.index("--inputs") + 1]) if "--inputs" in sys.argv else None
        main(Path(sys.argv[1]), steps, chosen, tiny if "--tiny" in sys.argv else TINYLLAMA, inputs)
