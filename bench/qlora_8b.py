"""QLoRA on a randomly initialised model of Llama-3.1-8B's shape, through the runner's own path.

recipes/sft_qlora.json with the model replaced by a local config.json of the real shape (random
weights: nothing can be downloaded on the test GPU), the byte tokenizer of the tiny Llama, and
generated text long enough to fill packed 2048-token rows. The runner's `prepare` loads, quantizes
and wraps the model and builds TRL's trainer; training runs `--steps` steps; nothing is saved.
Prints and writes (to --out) steps run, peak GPU memory and tokens per second.

    python bench/qlora_8b.py --steps 30 --out results.json [--tiny]
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LLAMA_31_8B = {  # meta-llama/Llama-3.1-8B config.json
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128256, "hidden_size": 4096,
    "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
    "head_dim": 128, "max_position_embeddings": 131072, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "tie_word_embeddings": False, "hidden_act": "silu", "initializer_range": 0.02, "attention_bias": False,
    "mlp_bias": False, "bos_token_id": 128000, "eos_token_id": 128001, "torch_dtype": "bfloat16",
}
TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16}


def write_inputs(folder: Path, tiny: bool, rows: int) -> Path:
    config = {**LLAMA_31_8B, **(TINY if tiny else {})}
    (folder / "model").mkdir()
    (folder / "model" / "config.json").write_text(json.dumps(config))
    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(500)]
    with open(folder / "train.jsonl", "w") as handle:
        for _ in range(rows):  # 800-3000 bytes = tokens with the byte tokenizer
            text, size = [], rng.randint(800, 3000)
            while sum(len(w) + 1 for w in text) < size:
                text.append(rng.choice(words))
            handle.write(json.dumps({"text": " ".join(text)}) + "\n")
    recipe = json.loads((ROOT / "recipes" / "sft_qlora.json").read_text())
    recipe.pop("$schema")
    recipe["model"].update(name_or_path=str(folder / "model"), init="random",
                           tokenizer=str(ROOT / "recipes" / "assets" / "tiny-llama"))
    recipe["data"] = {"format": "text", "train": {"path": str(folder / "train.jsonl")}}
    recipe["training"].update(eval_strategy="no", save_strategy="no", logging_steps=1,
                              gradient_accumulation_steps=1, num_train_epochs=1)
    recipe["output"] = {"dir": str(folder / "run")}
    if tiny:
        recipe["training"].update(optim="adamw_torch", bf16=False, max_length=256)
    path = folder / "recipe.json"
    path.write_text(json.dumps(recipe, indent=2))
    return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--out", default="qlora_8b.json")
    parser.add_argument("--tiny", action="store_true", help="a 2-layer model of the same kind, to test on a CPU")
    args = parser.parse_args()
    import torch

    from runner.plan.build import build_plan
    from runner.recipe.load import load_recipe
    from runner.commands.run import prepare

    gpu = torch.cuda.is_available()
    result: dict = {"steps_asked": args.steps, "shape": "tiny" if args.tiny else "Llama-3.1-8B"}
    with tempfile.TemporaryDirectory() as tmp:
        recipe = write_inputs(Path(tmp), args.tiny, rows=400)
        plan = build_plan(load_recipe(str(recipe), [f"training.max_steps={args.steps}"]))
        result["plan_parameters"] = plan["parameters"]
        import inspect

        from trl import SFTConfig

        config = plan["trainer"]["config"]
        if "activation_checkpointing" not in inspect.signature(SFTConfig.__init__).parameters:
            # transformers < 5.2x (the test GPU has 5.17) still calls it gradient_checkpointing
            config["gradient_checkpointing"] = config.pop("activation_checkpointing")
            result["renamed"] = "activation_checkpointing -> gradient_checkpointing (older transformers)"
        started = time.perf_counter()
        prepared = prepare(plan)
        result["prepare_s"] = round(time.perf_counter() - started, 1)
        trainer = prepared.trainer
        from runner.train.models import count_parameters

        result["parameters"] = count_parameters(trainer.model)
        if gpu:
            result["memory_after_load_gib"] = round(torch.cuda.memory_allocated() / 2**30, 2)
            torch.cuda.reset_peak_memory_stats()
        tokens = {"n": 0}
        forward = trainer.compute_loss

        def counting(model, inputs, *a, **k):
            mask = inputs.get("attention_mask")
            tokens["n"] += int(mask.sum()) if mask is not None else int(inputs["input_ids"].numel())
            return forward(model, inputs, *a, **k)

        trainer.compute_loss = counting
        started = time.perf_counter()
        metrics = trainer.train().metrics
        seconds = time.perf_counter() - started
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    step_times = metrics.get("train_runtime")
    result.update(steps_run=trainer.state.global_step, train_seconds=round(seconds, 1),
                  tokens_trained=tokens["n"], tokens_per_s=round(tokens["n"] / seconds, 1),
                  train_runtime=step_times, first_loss=losses[0] if losses else None,
                  last_loss=losses[-1] if losses else None,
                  device=torch.cuda.get_device_name() if gpu else "cpu",
                  versions={m: __import__(m).__version__ for m in ("torch", "transformers", "trl", "peft",
                                                                  "bitsandbytes")})
    if gpu:
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        result["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved() / 2**30, 2)
    print(json.dumps(result, indent=2))
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
