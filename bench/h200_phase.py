"""The small phases of bench/h200_check.sh, each saved to H200_RES/<phase>.json as soon as it ends.

    python bench/h200_phase.py env                   # versions, where each package is imported from, the GPU
    python bench/h200_phase.py fsdp2 [--tiny]        # FSDP2 through the runner, one process (bench/scale_gpu.py)
    python bench/h200_phase.py varlen                # the GPU varlen test (pytest) and bench/varlen_check.py
    python bench/h200_phase.py overhead [--rounds 2] # bench/overhead.py: runner vs plain TRL, every setting equal

Each child runs under the phase's deadline (H200_PHASE_END) and is killed with its process group at it.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent)]
import h200_common as common  # noqa: E402

PACKAGES = ["torch", "transformers", "trl", "peft", "accelerate", "datasets", "bitsandbytes", "liger_kernel",
            "tokenizers", "huggingface_hub", "safetensors", "regex", "jsonschema", "gguf", "pyarrow", "fsspec",
            "triton", "deepspeed", "pytest"]
NEEDED = ("torch", "transformers", "trl", "peft", "datasets", "jsonschema")


def env(args) -> int:
    found, failed = {}, {}
    for name in PACKAGES:
        try:
            module = importlib.import_module(name)
            found[name] = {"version": getattr(module, "__version__", "?"), "from": str(Path(module.__file__).parent)}
        except Exception as exc:  # noqa: BLE001 (record what the machine lacks, go on)
            failed[name] = f"{type(exc).__name__}: {str(exc)[:200]}"
    record = {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count(),
              "packages": found, "import_failed": failed, "pythonpath": os.environ.get("PYTHONPATH")}
    try:
        import torch

        record["cuda"] = {"available": torch.cuda.is_available(), "torch_cuda": torch.version.cuda}
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            record["cuda"].update(name=props.name, memory_gib=props.total_memory / 2**30,
                                  capability=list(torch.cuda.get_device_capability()),
                                  multiprocessors=props.multi_processor_count, bf16=torch.cuda.is_bf16_supported())
        from runner.launch import machine

        record["runner_machine"] = machine.probe(machine.hardware())
    except Exception as exc:  # noqa: BLE001
        record["cuda_error"] = f"{type(exc).__name__}: {exc}"
    if "bitsandbytes" in found:
        libs = sorted(p.name for p in Path(found["bitsandbytes"]["from"]).glob("libbitsandbytes_*.so"))
        record["bitsandbytes_libraries"] = libs
    try:
        record["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version,"
                                               "clocks.sm,clocks.max.sm,power.limit", "--format=csv"],
                                              capture_output=True, text=True, timeout=20).stdout.strip()
    except Exception as exc:  # noqa: BLE001
        record["nvidia_smi"] = f"{type(exc).__name__}: {exc}"
    common.save("env", record)
    print(json.dumps(record, indent=1), flush=True)
    missing = [name for name in NEEDED if name not in found]
    if missing:
        print(f"ENV FAILED: cannot import {missing}: nothing else can run", flush=True)
        return 2
    if "transformers" in found and not found["transformers"]["version"].startswith("5.23"):
        print(f"ENV NOTE: transformers {found['transformers']['version']} (the runner is tested on 5.23)", flush=True)
    return 0


def fsdp2(args) -> int:
    out = Path("/tmp/h200/fsdp")
    command = [sys.executable, "bench/scale_gpu.py", str(out), "--steps", str(args.steps), "--configs", args.config,
               "--inputs", "/tmp/h200/fsdp_inputs"] + (["--tiny"] if args.tiny else [])
    started = time.time()
    code, output = common.run(command, common.remaining() - 5, label=f"fsdp2 ({args.config})")
    record = {"command": " ".join(command), "exit": code, "wall_s": round(time.time() - started, 1),
              "config": args.config, "tiny": args.tiny}
    result_file = out / "scale_gpu.json"
    if code == 0 and result_file.is_file():
        record["result"] = json.loads(result_file.read_text()).get(args.config)
    else:
        log = out / f"{args.config}.log"
        record["error"] = ("killed at the deadline" if code is None else f"exit {code}") + ": " + common.tail(output)
        if log.is_file():
            record["log_tail"] = log.read_text()[-3000:]
    common.save("fsdp2", record)
    print(json.dumps(record, indent=1)[:3000], flush=True)
    return 0 if "result" in record and "failed" not in (record["result"] or {}) else 1


def varlen(args) -> int:
    """bench/varlen_check.py first (its model check is what the test asserts, plus the kernel's timing), then the
    test itself through pytest when time is left."""
    record = {}
    import torch

    if not torch.cuda.is_available():
        record["kernel"] = {"skipped": "bench/varlen_check.py needs a CUDA GPU"}
    else:
        code, output = common.run([sys.executable, "bench/varlen_check.py"], common.remaining() - 5,
                                  label="varlen check")
        record["kernel"] = common.result_line(output, "VARLEN ") or {"exit": code, "error": common.tail(output)}
        record["kernel"]["exit"] = code  # 1 with a VARLEN line: its assertion (< 0.05 and gradients) failed
    common.save("varlen", record)
    if common.remaining() > 20:
        test = [sys.executable, "-m", "pytest", "tests/tiny/test_fast_defaults.py", "-k", "varlen_kernel", "-q",
                "-p", "no:cacheprovider", "-rs"]
        code, output = common.run(test, common.remaining() - 3, label="varlen test")
        record["test"] = {"command": " ".join(test[1:]), "exit": code, "summary": common.tail(output, 3)}
    else:
        record["test"] = {"skipped": "no time left"}
    common.save("varlen", record)
    print(json.dumps(record, indent=1), flush=True)
    return 0 if record["kernel"].get("exit") in (0, None) and record["test"].get("exit", 0) == 0 \
        and "error" not in record["kernel"] else 1


def overhead(args) -> int:
    out = Path("/tmp/h200/overhead")
    command = [sys.executable, "bench/overhead.py", "--rounds", str(args.rounds), "--out", str(out)]
    code, output = common.run(command, common.remaining() - 5, label="overhead")
    record = {"command": " ".join(command[1:]), "exit": code}
    if code == 0 and (out / "overhead.json").is_file():
        found = json.loads((out / "overhead.json").read_text())
        record.update({k: found.get(k) for k in ("machine", "rounds", "median", "throughput_ratio",
                                                 "median_pair_ratio", "extra_time_to_first_step_s",
                                                 "median_pair_extra_first_step_s", "pair_ratios")})
        record["table"] = (out / "overhead.md").read_text()
    else:
        record["error"] = ("killed at the deadline" if code is None else f"exit {code}") + ": " + common.tail(output)
    common.save("overhead", record)
    print(json.dumps(record, indent=1), flush=True)
    return 0 if "error" not in record else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="phase", required=True)
    sub.add_parser("env")
    f = sub.add_parser("fsdp2")
    f.add_argument("--steps", type=int, default=8)
    f.add_argument("--config", default="fsdp2")
    f.add_argument("--tiny", action="store_true")
    sub.add_parser("varlen")
    o = sub.add_parser("overhead")
    o.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    common.stop_children_on_sigterm()
    return {"env": env, "fsdp2": fsdp2, "varlen": varlen, "overhead": overhead}[args.phase](args)


if __name__ == "__main__":
    sys.exit(main())
