"""Phase 1 of bench/h200_check.sh: plain TRL's defaults vs the runner's, full / QLoRA / LoRA, TinyLlama 1.1B shape.

    python bench/h200_throughput.py [--shape tinyllama] [--steps 14] [--warmup 4] [--examples 1000]
                                    [--rows full:trl,full:runner,...] [--name throughput]

bench/throughput.py's model shape, data (lengths uniform in 128..2048, batch 8, max_length 2048) and both sides:
bench/plain_trl_throughput.py (SFTConfig defaults) and the runner's `prepare` on a recipe that sets only batch,
max_length, steps and logging. Each row is its own process; tokens/s are real tokens over the steps after
--warmup (bench/meter.py). What this adds to bench/throughput.py:
- rows in priority order (full, then QLoRA: the varlen fast path on a 4-bit base, then LoRA), each started only if
  the phase's deadline (H200_PHASE_END) leaves room, killed at it, and saved the moment it ends; rows already
  measured on this machine (RES/name.json) are not run again, so a second call picks up where the first stopped;
- the QLoRA base weights are written from the GPU (random init, bf16), not built on the CPU;
- MFU on one basis for every row: 6 x 1.10e9 (the base model) x tokens/s over 989 TFLOP/s (bench/meter.py's
  own figure counts a 4-bit weight as its packed bytes, half the parameters);
- per runner row: what the runner decided, and its own peak-memory estimate for those decisions
  (runner.plan.decisions.memory_as_decided, as launch computed it) next to the measured peak.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent)]
import h200_common as common  # noqa: E402

ORDER = ["full:trl", "full:runner", "qlora:runner", "qlora:trl", "lora:trl", "lora:runner"]
MIN_ROW_S = 75  # do not start a row with less left (the H100's rows needed 35-71 s to their first step)


def worker(assets: str, mode: str, steps: int, warmup: int) -> None:
    """The runner side in its own process (bench/throughput.py's runner_worker, plus the memory estimate)."""
    started = time.perf_counter()
    from meter import report
    import throughput

    seen = common.capture_memory_estimate()
    prepared, meter, first = throughput.metered_runner(assets, mode, steps, warmup, {}, started)
    trainer = prepared.trainer
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    checkpointing = bool(getattr(trainer.args, "activation_checkpointing",
                                 getattr(trainer.args, "gradient_checkpointing", False)))
    report({"side": "runner", "mode": mode, "decided": throughput.decided(prepared),
            "activation_checkpointing": checkpointing, **common.estimate_peak_gib(seen, checkpointing), "args": common.training_args(trainer.args),
            **meter.result(trainer.model)}, started, first.at)


def write_weights(assets: Path) -> None:
    """Random bf16 weights for the QLoRA rows (both sides load them in 4-bit), built on the GPU when there is one."""
    if list((assets / "model").glob("*.safetensors")):
        return
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(assets / "model"), dtype=torch.bfloat16)
    model.save_pretrained(assets / "model")
    del model


def row_summary(row: dict) -> dict:
    if "tokens_per_s" in row:
        row["mfu_base_6n"] = 6 * common.BASE_PARAMETERS_1B * row["tokens_per_s"] / common.PEAK_BF16 \
            if row.get("shape") == "tinyllama" else None
        if row.get("estimate_peak_gib") and row.get("peak_gib"):
            row["estimate_over_measured"] = row["estimate_peak_gib"] / row["peak_gib"]
    return row


def ratios(rows: list[dict]) -> dict:
    found = {}
    targets = {"full": 6.0, "lora": 3.0, "qlora": 2.5}
    for mode, target in targets.items():
        pair = {r["side"]: r for r in rows if r["mode"] == mode and "tokens_per_s" in r}
        if len(pair) == 2:
            found[mode] = {"runner_over_trl": pair["runner"]["tokens_per_s"] / pair["trl"]["tokens_per_s"],
                           "target": target,
                           "first_step_behind_trl_s": (pair["runner"].get("first_step_s") or 0)
                           - (pair["trl"].get("first_step_s") or 0)}
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="tinyllama")
    parser.add_argument("--steps", type=int, default=14)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--rows", default=",".join(ORDER))
    parser.add_argument("--name", default="throughput")
    parser.add_argument("--assets", default="/tmp/h200/assets")
    parser.add_argument("--row-max-s", type=float, default=240, help="a row's own limit")
    parser.add_argument("--min-row-s", type=float, default=MIN_ROW_S)
    args = parser.parse_args()
    common.stop_children_on_sigterm()

    import throughput

    record = common.load(args.name) or {}
    if record.get("config") != [args.shape, args.steps, args.warmup, args.examples]:
        record = {"config": [args.shape, args.steps, args.warmup, args.examples], "rows": []}
    record.update(versions=throughput.versions(), mfu_basis="6 x 1,100,048,384 x tokens/s / 989e12 (tinyllama)")
    done = {(r["mode"], r["side"]) for r in record["rows"] if "tokens_per_s" in r}
    assets = Path(args.assets) / args.shape
    wanted = [tuple(item.split(":")) for item in args.rows.split(",")]
    todo = [(mode, side) for mode, side in wanted if (mode, side) not in done]
    if not todo:
        print(f"{args.name}: every row already measured on this machine", flush=True)
    if todo and not (assets / "train.jsonl").is_file():
        started = time.time()
        throughput.make_assets(assets, args.shape, args.examples, seed=0, weights=False)
        print(f"assets: {time.time() - started:.1f} s", flush=True)
    for mode, side in todo:
        left = common.remaining()
        if left < args.min_row_s:
            record["rows"] = [r for r in record["rows"] if (r["mode"], r["side"]) != (mode, side)] + [
                {"shape": args.shape, "mode": mode, "side": side,
                 "skipped": f"{left:.0f} s left, a row needs >= {args.min_row_s:.0f}"}]
            common.save(args.name, record)
            print(f"SKIP {mode}:{side}: {left:.0f} s left", flush=True)
            continue
        if mode == "qlora" and not list((assets / "model").glob("*.safetensors")):
            started = time.time()  # in a child: the GPU memory it takes is given back before the rows run
            code, output = common.run([sys.executable, __file__, "--weights", str(assets)], common.remaining() - 5,
                                      label="qlora weights")
            print(f"qlora weights: exit {code}, {time.time() - started:.1f} s", flush=True)
        if side == "trl":
            command = [sys.executable, "bench/plain_trl_throughput.py", str(assets), mode, str(args.steps),
                       str(args.warmup)]
        else:
            command = [sys.executable, __file__, "--worker", str(assets), mode, str(args.steps), str(args.warmup)]
        limit = min(args.row_max_s, common.remaining() - 5)
        started = time.time()
        code, output = common.run(command, limit, label=f"{args.name} {mode}:{side}")
        found = common.result_line(output)
        row = {"shape": args.shape, "mode": mode, "side": side, "wall_s": round(time.time() - started, 1)}
        if code == 0 and found:
            row.update(found)
        else:
            row["error"] = ("killed at the deadline" if code is None else f"exit {code}") + ": " + common.tail(output)
        record["rows"] = [r for r in record["rows"] if (r["mode"], r["side"]) != (mode, side)] + [row_summary(row)]
        record["ratios"] = ratios(record["rows"])
        common.save(args.name, record)
        shown = {k: row.get(k) for k in ("mode", "side", "tokens_per_s", "mfu_base_6n", "peak_gib",
                                         "estimate_peak_gib", "first_step_s", "wall_s", "error")}
        print("ROW " + json.dumps(shown), flush=True)
    record["ratios"] = ratios(record["rows"])
    common.save(args.name, record)
    print(json.dumps(record["ratios"], indent=1), flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--weights":
        write_weights(Path(sys.argv[2]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
    else:
        main()
