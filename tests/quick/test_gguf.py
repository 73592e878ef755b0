"""model.gguf_file on tiny Llamas written as GGUF files by llama.cpp's own writer (the `gguf` package).

The plan reads the file without torch (config, storage types, the dtype the weights train in) and refuses
what cannot work before anything loads. Runs on these files are in tests/tiny/test_gguf_training.py; the same
path on real SmolLM2 weights in tests/real/test_real.py.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT, TINY_MODEL
from runner.plan import estimate
from runner.plan import gguf_file
from runner.errors import RecipeError
from runner.plan.build import build_plan
from runner.recipe.load import load_recipe

gguf = pytest.importorskip("gguf")  # installed with the test extra; transformers needs it to read GGUF files

from gguf_assets import TINY_GGUF as NAME, gguf_recipe, write_tiny  # noqa: E402

CONFIG = json.loads((TINY_MODEL / "config.json").read_text())


def plan_of(recipe_file, recipe):
    return build_plan(load_recipe(recipe_file(recipe)))


# --- the plan, torch-free ---------------------------------------------------------------------


@pytest.mark.parametrize("quantize", [None, "Q8_0"])
def test_header_reader_agrees_with_llama_cpps_reader(tmp_path, quantize):
    path = write_tiny(tmp_path / "m", quantize)
    ours = gguf_file.read_header(path)
    theirs = gguf.GGUFReader(path)
    assert ours["architecture"] == "llama"
    assert ours["tensor_types"] == {t.name: int(t.tensor_type) for t in theirs.tensors}
    for key, field in theirs.fields.items():
        if key.startswith("llama."):
            assert ours["metadata"][key] == pytest.approx(field.contents()), key


@pytest.mark.parametrize("quantize, dtype, expected", [
    (None, "auto", "float32"),
    ("Q8_0", "auto", "float32"),
    ("F16", "auto", "float32"),  # transformers' legacy GGUF loader (llama) loads even F16 files in float32
    ("Q8_0", "bfloat16", "bfloat16"),
    ("Q8_0", None, None),
])
def test_plan_states_the_dtype_the_weights_train_in(tmp_path, recipe_file, quantize, dtype, expected):
    folder = tmp_path / "m"
    write_tiny(folder, quantize)
    plan = plan_of(recipe_file, gguf_recipe(tmp_path, folder, model={"dtype": dtype}))
    stated = plan["model"]["gguf"]
    assert stated["weights_dtype"]["dtype"] == expected
    assert stated["dequantized_on_load"] and stated["architecture"] == "llama"
    assert stated["quantized"] is (quantize == "Q8_0")
    if dtype is None:
        assert "decided at launch" in stated["weights_dtype"]["why"]
    if quantize == "Q8_0":  # 2-D weights in blocks (embeddings + 7 per layer), norms as F32 (2 per layer + final)
        assert stated["tensor_types"] == {"F32": 2 * 3 + 1, "Q8_0": 1 + 7 * 3}
    # the config read from the GGUF metadata counts exactly what the config.json counts
    assert plan["parameters"]["known"] and plan["parameters"]["total"] == estimate.total_parameters(CONFIG)
    assert plan["model"]["gguf_file"] == NAME and plan["model"]["tokenizer_gguf_file"] is None


@pytest.mark.parametrize("model, fragment, hint", [
    ({"quantization": {"method": "bnb_4bit"}}, "cannot also be loaded through bitsandbytes",
     "remove model.quantization"),
    ({"init": "random"}, "reads no weights", "set model.init to pretrained"),
    ({"gguf_file": "other.gguf"}, "no file 'other.gguf' in", "GGUF files there: broken.gguf, cut.gguf, tiny.gguf"),
    ({"gguf_file": "../tiny.gguf"}, "must name a file inside model.name_or_path", "set name_or_path"),
    ({"gguf_file": "broken.gguf"}, "is not a readable GGUF file: does not start with the GGUF magic bytes", None),
    ({"gguf_file": "cut.gguf"}, "is not a readable GGUF file: its header is damaged or truncated", None),
])
def test_what_cannot_work_is_refused_at_model_gguf_file(tmp_path, recipe_file, model, fragment, hint):
    folder = tmp_path / "m"
    path = write_tiny(folder)
    (folder / "broken.gguf").write_text("not a gguf file, but long enough to have a header")
    (folder / "cut.gguf").write_bytes(path.read_bytes()[:200])
    peft = {"method": "lora"} if "quantization" in model else {"method": "none"}  # QLoRA, else full: trainable
    with pytest.raises(RecipeError) as info:
        plan_of(recipe_file, gguf_recipe(tmp_path, folder, model=model, peft=peft))
    [problem] = info.value.problems
    assert problem.path == "/model/gguf_file" and fragment in problem.message, problem.message
    assert hint is None or hint in problem.hint


def test_a_file_name_without_the_gguf_suffix_is_a_schema_error(tmp_path, recipe_file):
    folder = tmp_path / "m"
    write_tiny(folder)
    with pytest.raises(RecipeError) as info:
        load_recipe(recipe_file(gguf_recipe(tmp_path, folder, model={"gguf_file": "tiny.bin"})))
    problems = [(p.path, p.message) for p in info.value.problems]
    assert problems == [("/model/gguf_file", "'tiny.bin': must name a .gguf file")]


def test_plan_of_a_gguf_recipe_imports_no_heavy_library_and_a_mistake_exits_2(tmp_path, recipe_file):
    folder = tmp_path / "m"
    write_tiny(folder)
    good = recipe_file(gguf_recipe(tmp_path, folder), "good.json")
    code = ("import sys; from runner.__main__ import main; rc = main(['plan', sys.argv[1]]);"
            "heavy = [m for m in ('torch', 'transformers', 'trl', 'peft', 'datasets', 'gguf', 'numpy') "
            "if m in sys.modules]; assert rc == 0 and not heavy, heavy")
    subprocess.run([sys.executable, "-c", code, str(good)], cwd=ROOT, check=True, capture_output=True)
    bad = recipe_file(gguf_recipe(tmp_path, folder, model={"gguf_file": "missing.gguf"}), "bad.json")
    result = subprocess.run([sys.executable, "-m", "runner", "plan", str(bad)], cwd=ROOT, capture_output=True,
                            text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "/model/gguf_file: no file 'missing.gguf'" in result.stderr, result.stderr
