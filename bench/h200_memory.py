"""Phase 4 of bench/h200_check.sh: the memory estimate against fresh peaks, out of sample.

    python bench/h200_memory.py [--device cuda|cpu] [--steps 3] [--cases SHAPE:CASE[@BATCHxLENGTH],...]

bench/memory_calibration.py's `measure` (random weights from a config, a few SFTTrainer steps, the peak of
torch.cuda.max_memory_allocated) and its `estimate_for` (runner.plan.memory), one case at a time so each is saved
as soon as it is measured and the phase's deadline (H200_PHASE_END) is checked between cases. Out of sample, i.e.
in no row of the H100 table in bench/RESULTS.md:
- the real model's shape: SmolLM2-135M-Instruct (Llama, 30 layers, hidden 576, 9/3 heads, vocab 49,152, tied);
- the Qwen2-0.5B shape (never measured on a GPU: its 151,936-token vocabulary tests the LM head's count);
- settings: LoRA without checkpointing and QLoRA on the runner's fast path (varlen + Liger over a 4-bit base),
  TRL full fine-tuning with bf16 weights and no checkpointing (the 1.1B row RESULTS.md left open), and long rows
  (batch 2 x 8,192).
Each case: estimate / measured. The issue's target: within +-10%.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent)]
import h200_common as common  # noqa: E402

SMOLLM2 = {"model_type": "llama", "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
           "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64, "vocab_size": 49152,
           "tie_word_embeddings": True, "max_position_embeddings": 8192, "rope_theta": 100000.0,
           "rms_norm_eps": 1e-5}
EXTRA_CASES = {  # (weights dtype, peft, quantized, activation checkpointing, runner path), as memory_calibration.CASES
    "runner_lora_nockpt": ("bfloat16", "lora", False, False, True),
    "runner_qlora_ckpt": ("bfloat16", "lora", True, True, True),
}
ORDER = ["smollm2-135m:runner_lora_nockpt", "smollm2-135m:runner_full_nockpt", "qwen2-0.5b:runner_full_nockpt",
         "qwen2-0.5b:runner_lora_ckpt", "tinyllama-1.1b:runner_qlora_ckpt", "tinyllama-1.1b:full_bf16_nockpt",
         "qwen2-0.5b:runner_full_nockpt@2x8192", "qwen2-0.5b:qlora_nf4_ckpt"]
MIN_CASE_S = 25


def parse(item: str) -> tuple[str, str, int, int]:
    spec, _, size = item.partition("@")
    shape, case = spec.split(":")
    batch, length = (int(x) for x in size.split("x")) if size else (8, 2048)
    return shape, case, batch, length


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--cases", default=",".join(ORDER))
    parser.add_argument("--optim", default="adamw_torch_fused")
    parser.add_argument("--name", default="memory")
    parser.add_argument("--min-case-s", type=float, default=MIN_CASE_S)
    args = parser.parse_args()
    common.stop_children_on_sigterm()

    import memory_calibration as calibration

    calibration.SHAPES["smollm2-135m"] = SMOLLM2
    calibration.CASES.update(EXTRA_CASES)
    record = common.load(args.name) or {}
    if record.get("config") != [args.device, args.steps, args.optim]:
        record = {"config": [args.device, args.steps, args.optim], "cases": []}
    done = {c["item"] for c in record["cases"] if "peak_allocated_gib" in c or (args.device == "cpu" and
                                                                                  "error" not in c and "item" in c
                                                                                  and "skipped" not in c)}
    scratch = Path("/tmp/h200/memory")
    scratch.mkdir(parents=True, exist_ok=True)
    for item in args.cases.split(","):
        if item in done:
            continue
        shape, case, batch, length = parse(item)
        left = common.remaining()
        if left < args.min_case_s:
            entry = {"item": item, "skipped": f"{left:.0f} s left, a case needs >= {args.min_case_s:.0f}"}
            print(f"SKIP {item}: {left:.0f} s left", flush=True)
        else:
            out = scratch / f"{item.replace(':', '_').replace('@', '_')}.json"
            started = time.time()
            calibration.measure(SimpleNamespace(out=str(out), shapes=[shape], cases=[case], batch=batch,
                                                length=length, steps=args.steps, optim=args.optim,
                                                device=args.device))
            measured = json.loads(out.read_text())
            entry = {"item": item, "batch": batch, "length": length, **measured["cases"][0],
                     "wall_s": round(time.time() - started, 1), "device": measured["device"],
                     "versions": measured.get("versions")}
            if "peak_allocated_gib" in entry:
                estimate = calibration.estimate_for(entry, batch, length, args.optim)
                entry["estimate_gib"] = round(estimate, 3)
                entry["estimate_over_measured"] = round(estimate / entry["peak_allocated_gib"], 3)
                entry["within_10pct"] = abs(entry["estimate_over_measured"] - 1) <= 0.10
            print("CASE " + json.dumps({k: entry.get(k) for k in (
                "item", "peak_allocated_gib", "estimate_gib", "estimate_over_measured", "error", "wall_s")}),
                flush=True)
        record["cases"] = [c for c in record["cases"] if c.get("item") != item] + [entry]
        ratios = [c["estimate_over_measured"] for c in record["cases"] if "estimate_over_measured" in c]
        record["largest_deviation"] = max((abs(r - 1) for r in ratios), default=None)
        common.save(args.name, record)


if __name__ == "__main__":
    main()
