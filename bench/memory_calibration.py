"""Measure peak GPU memory of plain TRL SFT steps, and compare it with `runner.plan.memory`'s estimate.

Two parts, so the GPU time is spent only on measuring:

    python bench/memory_calibration.py measure --out results.json   # on a GPU: torch.cuda.max_memory_allocated
    python bench/memory_calibration.py compare results.json         # anywhere: estimate vs measured, a Markdown table

`measure` builds each model from its config with random weights (nothing is downloaded), trains a few
SFTTrainer steps on pre-tokenized rows, half of them `--length` tokens long and half shorter (so nearly
every padded batch is the longest possible and carries an attention mask, as real padded batches do),
and records the peak of memory allocated by PyTorch after resetting it for each case. Plain TRL cases:
full fine-tuning (fp32 weights with bf16 autocast, and bf16 weights), LoRA r=16 on every linear layer
over bf16 weights, and QLoRA (NF4, double quantization, bf16 compute), with activation checkpointing on
and off. Runner-path cases (`runner_*`, GPU only): bf16 weights, packing bfd (padding-free rows of
batch x length tokens), the runner's varlen attention and Liger's kernels, as the fast defaults decide.
Each case is written to the JSON as soon as it finishes, so a run cut short keeps what it measured.
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

# Model shapes (config.json fields), written out so nothing is fetched.
SHAPES = {
    "qwen2-0.5b": {
        "model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
        "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": True,
        "max_position_embeddings": 32768, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
    },
    "tinyllama-1.1b": {
        "model_type": "llama", "hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22,
        "num_attention_heads": 32, "num_key_value_heads": 4, "vocab_size": 32000, "tie_word_embeddings": False,
        "max_position_embeddings": 2048, "rope_theta": 10000.0, "rms_norm_eps": 1e-5,
    },
}
# name -> (weights dtype, peft, quantized, activation checkpointing, runner path: packed + varlen + Liger)
CASES = {  # in the order they run: the most telling first, so a run cut short keeps them
    "runner_full_nockpt": ("bfloat16", "none", False, False, True),
    "full_fp32_nockpt": ("float32", "none", False, False, False),
    "full_bf16_nockpt": ("bfloat16", "none", False, False, False),
    "runner_full_ckpt": ("bfloat16", "none", False, True, True),
    "runner_lora_ckpt": ("bfloat16", "lora", False, True, True),
    "full_fp32_ckpt": ("float32", "none", False, True, False),
    "lora_bf16_ckpt": ("bfloat16", "lora", False, True, False),
    "qlora_nf4_ckpt": ("bfloat16", "lora", True, True, False),
    "lora_bf16_nockpt": ("bfloat16", "lora", False, False, False),
    "full_bf16_ckpt": ("bfloat16", "none", False, True, False),
}
CKPT_KEY = "activation_checkpointing"
LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "target_modules": "all-linear"}


def measure(args) -> None:
    import torch
    from datasets import Dataset
    from transformers import AutoConfig, AutoModelForCausalLM
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    out = Path(args.out)
    gpu = args.device == "cuda"
    if not gpu:  # a smoke test of the code paths on the CPU (tiny shapes): no memory figures
        for name in SHAPES:
            SHAPES[name] = {**SHAPES[name], "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                            "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512}
    results = {"device": torch.cuda.get_device_name(0) if gpu else "cpu", "torch": torch.__version__,
               "batch": args.batch, "length": args.length, "steps": args.steps, "optim": args.optim, "cases": []}
    import transformers, trl, peft  # noqa: E401 (versions for the record)
    global CKPT_KEY  # transformers 5.23 renamed gradient_checkpointing; the GPU machine may have an older one
    CKPT_KEY = "activation_checkpointing" if "activation_checkpointing" in SFTConfig.__dataclass_fields__ \
        else "gradient_checkpointing"
    results["versions"] = {"transformers": transformers.__version__, "trl": trl.__version__, "peft": peft.__version__}
    # case by case across the shapes: a run cut short has measured each shape on the first cases
    for case, shape_name in [(c, s) for c in args.cases for s in args.shapes]:
            shape = SHAPES[shape_name]
            config = AutoConfig.for_model(**shape)
            rows = Dataset.from_dict({"input_ids": token_rows(torch, shape["vocab_size"], args)})
            dtype_name, peft_method, quantized, ckpt, runner_path = CASES[case]
            dtype = getattr(torch, dtype_name)
            record = {"shape": shape_name, "case": case, "dtype": dtype_name, "peft": peft_method,
                      "quantized": quantized, "activation_checkpointing": ckpt, "runner_path": runner_path}
            fast = {}
            if runner_path:  # what the runner's fast defaults decide on a GPU with varlen and Liger
                from runner.train import attention

                attention.register()
                config._attn_implementation = attention.NAME  # on the CPU: its per-document fallback
                fast = {"packing": True, "packing_strategy": "bfd", "use_liger_kernel": gpu}  # Liger needs Triton
            started = time.monotonic()
            try:
                torch.manual_seed(0)
                with torch.device(args.device):
                    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
                if quantized:  # and the runner's k-bit preparation: what is not 4-bit goes to fp32
                    from peft import prepare_model_for_kbit_training

                    quantize_4bit(model, args.device)
                    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
                if gpu:
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                    record["after_load_gib"] = torch.cuda.memory_allocated() / 2**30
                sft = SFTConfig(output_dir="/tmp/calib-out", per_device_train_batch_size=args.batch,
                                max_steps=args.steps, max_length=args.length, bf16=True, optim=args.optim,
                                **{CKPT_KEY: ckpt}, **fast, logging_steps=1, save_strategy="no",
                                report_to="none", dataloader_num_workers=0, use_cpu=not gpu)
                trainer = SFTTrainer(model=model, args=sft, train_dataset=rows, processing_class=tiny_tokenizer(),
                                     peft_config=LoraConfig(task_type="CAUSAL_LM", **LORA) if peft_method == "lora"
                                     else None)
                trainer.train()
                if gpu:
                    torch.cuda.synchronize()
                    record["peak_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
                    record["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
                record["trainable"] = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
            except torch.OutOfMemoryError as exc:
                record["error"] = "OOM: " + str(exc).splitlines()[0][:200]
            except Exception as exc:  # record and go on: one broken case must not lose the others
                record["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
            record["seconds"] = round(time.monotonic() - started, 1)
            print(json.dumps(record), flush=True)
            results["cases"].append(record)
            out.write_text(json.dumps(results, indent=2))
            trainer = model = None
            gc.collect()
            if gpu:
                torch.cuda.empty_cache()


def token_rows(torch, vocab: int, args) -> list[list[int]]:
    """Half the rows `length` tokens long, half shorter: padded batches nearly always hold a full-length row
    and a mask; packed rows fill up to batch x length tokens."""
    count = args.batch * args.steps * 4
    lengths = [args.length if i % 2 == 0 else int(torch.randint(args.length // 16, args.length, ()))
               for i in range(count)]
    return [torch.randint(2, vocab - 1, (n,)).tolist() for n in lengths]


def quantize_4bit(model, device: str) -> None:
    """The decoder layers' linear modules as bitsandbytes NF4 (double quantization, bf16 compute), in place.

    What `from_pretrained(quantization_config=BitsAndBytesConfig(load_in_4bit=True, ...))` builds (embeddings,
    norms and the LM head stay in the load dtype), without writing and reading a checkpoint.
    """
    import bitsandbytes as bnb
    import torch

    for layer in model.model.layers:
        for parent in list(layer.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, torch.nn.Linear):
                    quantized = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                                  compute_dtype=torch.bfloat16, compress_statistics=True,
                                                  quant_type="nf4", device="cpu")
                    quantized.weight = bnb.nn.Params4bit(child.weight.data.cpu(), requires_grad=False,
                                                         compress_statistics=True, quant_type="nf4")
                    if child.bias is not None:
                        quantized.bias = torch.nn.Parameter(child.bias.data.cpu(), requires_grad=False)
                    setattr(parent, name, quantized.to(device))
    model.is_loaded_in_4bit = True  # TRL then keeps the adapter in bf16, as for a model loaded in 4-bit


def tiny_tokenizer():
    """A two-token tokenizer: the rows are already token ids; TRL only needs the pad and EOS tokens."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(WordLevel({"<pad>": 0, "<eos>": 1}, unk_token="<pad>"))
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>")


def estimate_for(record: dict, batch: int, length: int, optim: str = "adamw_torch") -> float:
    """runner.plan.memory's estimate of the peak allocated GiB for one measured case."""
    from runner.plan import memory

    runner_path = record.get("runner_path", False)
    settings = memory.Settings(
        weights_dtype=record["dtype"],
        quantization={"method": "bnb_4bit", "bnb_4bit_use_double_quant": True} if record["quantized"]
        else {"method": "none"},
        peft={"method": "lora", **LORA} if record["peft"] == "lora" else {"method": "none"},
        optim=optim, mixed_precision="bf16", batch=batch, length=length,
        activation_checkpointing=record["activation_checkpointing"], kind="sft",
        attention="runner_varlen" if runner_path else "sdpa", liger=runner_path, padding_free=runner_path)
    return memory.peak(SHAPES[record["shape"]], settings)["peak_bytes"] / memory.GIB


def compare(args) -> None:
    results = json.loads(Path(args.results).read_text())
    lines = ["| model | case | measured peak GiB | estimate GiB | estimate / measured |", "|---|---|---|---|---|"]
    worst = 0.0
    for record in results["cases"]:
        if "peak_allocated_gib" not in record:
            lines.append(f"| {record['shape']} | {record['case']} | {record.get('error', '?')} | | |")
            continue
        est = estimate_for(record, results["batch"], results["length"], results.get("optim", "adamw_torch"))
        ratio = est / record["peak_allocated_gib"]
        worst = max(worst, abs(ratio - 1))
        lines.append(f"| {record['shape']} | {record['case']} | {record['peak_allocated_gib']:.2f} | {est:.2f} | "
                     f"{ratio:.2f} |")
    lines.append(f"\nlargest deviation: {worst * 100:.1f}%")
    print("\n".join(lines))


def main(argv=None) -> None:
    top = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = top.add_subparsers(dest="command", required=True)
    m = sub.add_parser("measure")
    m.add_argument("--out", required=True)
    m.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    m.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    m.add_argument("--batch", type=int, default=8)
    m.add_argument("--length", type=int, default=2048)
    m.add_argument("--steps", type=int, default=4)
    m.add_argument("--optim", default="adamw_torch_fused", help="TRL's default (the runner's on a GPU)")
    m.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    c = sub.add_parser("compare")
    c.add_argument("results")
    args = top.parse_args(argv)
    measure(args) if args.command == "measure" else compare(args)


if __name__ == "__main__":
    sys.exit(main())
