"""Merge the phases' results (H200_RES/*.json) into $H200_OUT/results.json and a readable $H200_OUT/summary.md.

    python bench/h200_collect.py          # standard library only: cheap enough to run after every row

Called by bench/h200_common.save after every row, case or phase, so whatever stops the device run later, what was
measured so far is already in $OUT (which the device tool sends back even when the command is killed).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

RES = Path(os.environ.get("H200_RES", "/tmp/h200/res"))
OUT = Path(os.environ.get("H200_OUT", os.environ.get("OUT", "/tmp/h200/out")))
ORDER = ["env", "throughput", "smollm2", "fsdp2", "memory", "varlen", "overhead"]


def num(value, spec=",.0f", none="-"):
    return none if value is None else format(value, spec)


def throughput_lines(t: dict) -> list[str]:
    lines = ["## 1. Throughput, TinyLlama 1.1B shape, lengths U(128, 2048), batch 8, max_length 2048",
             f"steps {t['config'][1]}, warm-up {t['config'][2]}, {t['config'][3]} examples; "
             f"MFU: {t.get('mfu_basis')}", "",
             "| mode | side | tokens/s | runner/TRL | MFU 6N(1.1B) | peak GiB | runner's estimate GiB | est/meas | "
             "first step s | decided (runner) |", "|---|---|---|---|---|---|---|---|---|---|"]
    base = {r["mode"]: r.get("tokens_per_s") for r in t["rows"] if r["side"] == "trl"}
    for r in t["rows"]:
        if "tokens_per_s" not in r:
            lines.append(f"| {r['mode']} | {r['side']} | {r.get('skipped') or r.get('error', '?')[:300]} |||||||||")
            continue
        ratio = f"{r['tokens_per_s'] / base[r['mode']]:.2f}x" if r["side"] == "runner" and base.get(r["mode"]) else ""
        decided = r.get("decided") or {}
        short = ", ".join(f"{k.rsplit('/', 1)[-1]}={v}" for k, v in decided.items()
                          if k.rsplit("/", 1)[-1] in ("attn_implementation", "packing", "dtype", "use_liger_kernel",
                                                      "activation_checkpointing", "optim"))
        lines.append(f"| {r['mode']} | {r['side']} | {num(r['tokens_per_s'])} | {ratio} | "
                     f"{num(r.get('mfu_base_6n'), '.1%')} | {num(r.get('peak_gib'), '.2f')} | "
                     f"{num(r.get('estimate_peak_gib'), '.2f')} | {num(r.get('estimate_over_measured'), '.3f')} | "
                     f"{num(r.get('first_step_s'), '.1f')} | {short} |")
    for mode, found in (t.get("ratios") or {}).items():
        met = "met" if found["runner_over_trl"] >= found["target"] else "NOT met"
        lines.append(f"- {mode}: runner/TRL {found['runner_over_trl']:.2f}x (target >= {found['target']}x: {met}); "
                     f"first step {found['first_step_behind_trl_s']:+.1f} s vs TRL (target <= +5 s)")
    full = [r for r in t["rows"] if r["mode"] == "full" and r["side"] == "runner" and r.get("mfu_base_6n")]
    if full:
        lines.append(f"- full fine-tuning MFU {full[0]['mfu_base_6n']:.1%} (target >= 50%)")
    return lines


def smollm2_lines(s: dict) -> list[str]:
    steps, batch, length = s["config"]
    lines = [f"## 2. SmolLM2-135M-Instruct (real weights) LoRA SFT, {steps} steps, batch {batch}, max_length {length}",
             "", "| side | tokens/s | peak GiB | runner's estimate GiB | first step s | mixed precision | "
             "first / last loss |", "|---|---|---|---|---|---|---|"]
    for name, side in s["sides"].items():
        if "tokens_per_s" not in side:
            lines.append(f"| {name} | {side.get('skipped') or side.get('error', '?')[:300]} ||||||")
            continue
        losses = side.get("losses") or []
        ends = f"{losses[0]['loss']:.4f} / {losses[-1]['loss']:.4f}" if losses else ""
        lines.append(f"| {name} | {num(side['tokens_per_s'])} | {num(side.get('peak_gib'), '.2f')} | "
                     f"{num(side.get('estimate_peak_gib'), '.2f')} | {num(side.get('first_step_s'), '.1f')} | "
                     f"{side.get('mixed_precision')} | {ends} |")
    c = s.get("compare") or {}
    if "loss_parity" in c:
        p = c["loss_parity"]
        lines.append(f"- loss curves plain vs runner (equal settings): {p['steps_compared']} steps, max |diff| "
                     f"{num(p['max_abs_diff'], '.5f')}, max relative {num(p['max_rel_diff'], '.2%')}, within 1%: "
                     f"{p['within_1pct']}; trainer arguments that differ: {c.get('args_differ') or 'none'}")
    for key, value in c.items():
        if key not in ("loss_parity", "args_differ", "mixed_precision"):
            lines.append(f"- {key}: {num(value, '.3f')}")
    return lines


def fsdp2_lines(f: dict) -> list[str]:
    shape = "the tiny shape (dry run)" if f.get("tiny") else "TinyLlama 1.1B"
    lines = [f"## 3. {f.get('config', 'fsdp2')} through the runner, one process (bench/scale_gpu.py, {shape}, "
             "batch 8 x 1024)"]
    r = f.get("result") or {}
    if r and "tokens_per_s" in r:
        lines.append(f"- {num(r['tokens_per_s'])} tokens/s, {r['s_per_step']:.3f} s/step, peak allocated "
                     f"{num(r.get('peak_allocated_gib'), '.1f')} GiB / reserved {num(r.get('peak_reserved_gib'), '.1f')}"
                     f" GiB, final loss {r.get('final_loss')}, saved {r.get('saved_files')}, topology "
                     f"{(r.get('topology') or {}).get('engine')}, wall {f.get('wall_s')} s")
    else:
        lines.append(f"- failed or not run: {f.get('error') or r}"[:1500])
    return lines


def memory_lines(m: dict) -> list[str]:
    lines = ["## 4. Memory estimate vs measured peak, out of sample (bench/memory_calibration.py cases)", "",
             "| shape:case@batch x length | measured GiB | estimate GiB | est/meas | within 10% |", "|---|---|---|---|---|"]
    for c in m["cases"]:
        if "peak_allocated_gib" not in c:
            lines.append(f"| {c['item']} | {c.get('skipped') or c.get('error') or 'no GPU figure'} |||")
            continue
        lines.append(f"| {c['item']} | {c['peak_allocated_gib']:.2f} | {num(c.get('estimate_gib'), '.2f')} | "
                     f"{num(c.get('estimate_over_measured'), '.3f')} | {c.get('within_10pct')} |")
    if m.get("largest_deviation") is not None:
        lines.append(f"- largest deviation {m['largest_deviation']:.1%} (target +-10%)")
    return lines


def varlen_lines(v: dict) -> list[str]:
    test = v.get("test") or {}
    return ["## 5. Varlen kernel", f"- bench/varlen_check.py: {json.dumps(v.get('kernel'))}",
            f"- test: {test.get('skipped') or 'exit ' + str(test.get('exit')) + ': ' + str(test.get('summary'))}"]


def overhead_lines(o: dict) -> list[str]:
    if "error" in o:
        return ["## 6. Overhead (tiny model, every setting equal)", f"- {o['error']}"]
    return ["## 6. Overhead (tiny model, every setting equal)", o.get("table", "")]


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    merged = {}
    for path in sorted(RES.glob("*.json")):
        try:
            merged[path.stem] = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            merged[path.stem] = {"unreadable": str(exc)}
    merged["collected_at"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    tmp = OUT / ".results.json.tmp"
    tmp.write_text(json.dumps(merged, indent=1, default=str) + "\n")
    tmp.replace(OUT / "results.json")
    lines = [f"# bench/h200_check.sh results ({merged['collected_at']})", ""]
    e = merged.get("env") or {}
    if e:
        cuda, pk = e.get("cuda") or {}, e.get("packages") or {}
        lines.append(f"Machine: {cuda.get('name', 'no GPU')} ({num(cuda.get('memory_gib'), '.1f')} GiB), "
                     f"{e.get('cpus')} CPUs, Python {e.get('python')}; " +
                     ", ".join(f"{k} {v['version']}" for k, v in pk.items()) +
                     (f"; import failed: {', '.join(e['import_failed'])}" if e.get("import_failed") else ""))
        lines.append("")
    makers = {"throughput": throughput_lines, "smollm2": smollm2_lines, "fsdp2": fsdp2_lines, "memory": memory_lines,
              "varlen": varlen_lines, "overhead": overhead_lines}
    for name in ORDER[1:]:
        if name in merged:
            try:
                lines += makers[name](merged[name]) + [""]
            except Exception as exc:  # noqa: BLE001 (a summary bug must not hide the raw results)
                lines += [f"## {name}: summary failed ({type(exc).__name__}: {exc}); see results.json", ""]
    (OUT / ".summary.md.tmp").write_text("\n".join(lines) + "\n")
    (OUT / ".summary.md.tmp").replace(OUT / "summary.md")


if __name__ == "__main__":
    main()
