"""model.gguf_file on tiny Llamas written as GGUF files by llama.cpp's own writer (the `gguf` package), loaded by
transformers: the tokenizer read from the file, a run dequantizes the weights and saves plain safetensors, and
every command that reads the finished run (predict, eval, merge) loads the GGUF base again for an adapter.
The plan's torch-free side is in tests/quick/test_gguf.py; real SmolLM2 weights in tests/real/test_real.py.
"""
from __future__ import annotations

import json

import pytest

from fresh_process import logits_without_peft
from conftest import TINY_MODEL, write_jsonl
from runner.plan.build import build_plan
from runner.recipe.load import load_recipe

gguf = pytest.importorskip("gguf")  # installed with the test extra; transformers needs it to read GGUF files

from gguf_assets import TINY_GGUF as NAME, gguf_recipe, write_tiny  # noqa: E402

CONFIG = json.loads((TINY_MODEL / "config.json").read_text())


def plan_of(recipe_file, recipe):
    return build_plan(load_recipe(recipe_file(recipe)))


def torch_state() -> dict:
    """A tiny Llama as transformers initialises it (seeded), as float32 numpy arrays."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(LlamaConfig(**CONFIG))
    return {k: v.numpy().copy() for k, v in model.state_dict().items() if k != "lm_head.weight"}  # tied


def tiny_run_plan(tmp_path, recipe_file, **sections):
    from assets import reverse_rows

    folder = tmp_path / "m"
    state = torch_state()
    write_tiny(folder, state=state)
    recipe = gguf_recipe(tmp_path, folder, data={"format": "prompt_completion", "train": {"path": "rows.jsonl"},
                                                 "eval": {"path": "rows.jsonl"}},
                         training={"max_steps": 4, "learning_rate": 5e-3, "per_device_train_batch_size": 16,
                                   "bf16": False}, **sections)
    write_jsonl(tmp_path / "rows.jsonl", reverse_rows(32, seed=5))
    return plan_of(recipe_file, recipe), state


def test_the_tokenizer_comes_from_the_same_file_unless_named(tmp_path, recipe_file):
    folder = tmp_path / "m"
    write_tiny(folder)
    recipe = gguf_recipe(tmp_path, folder)
    recipe["model"].pop("tokenizer")
    recipe["peft"] = {"method": "prompt_tuning", "prompt_tuning_init": "TEXT", "prompt_tuning_init_text": "reverse"}
    plan = plan_of(recipe_file, recipe)
    assert plan["model"]["tokenizer"] == str(folder) and plan["model"]["tokenizer_gguf_file"] == NAME
    # a soft prompt initialised from text: peft tokenizes it with the same file's tokenizer
    from runner.train.adapters import peft_config

    config = peft_config(plan["peft"])
    assert config.tokenizer_name_or_path == str(folder) and config.tokenizer_kwargs == {"gguf_file": NAME}


def test_full_fine_tuning_of_a_gguf_model_saves_plain_safetensors(tmp_path, recipe_file):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from runner.train import models
    from runner.commands.inference import predict
    from runner.commands.run import run

    plan, source = tiny_run_plan(tmp_path, recipe_file)
    loaded = models.load_model(plan["model"], seed=0)
    # what trains is the file's weights, q/k rows put back in transformers' order, with no quantizer left on it
    assert all(torch.equal(loaded.state_dict()[k], torch.from_numpy(v)) for k, v in source.items())
    assert not loaded.is_quantized and not hasattr(loaded.config, "quantization_config")
    manifest = run(plan, argv=["test"])
    out = tmp_path / "run"
    assert manifest["weights_dtype"] == "float32" and not list(out.glob("*.gguf"))
    assert f"GGUF file {NAME} (dequantized to float32)" in (out / "report.md").read_text()
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    saved = load_file(out / "model.safetensors")
    reloaded = AutoModelForCausalLM.from_pretrained(out)  # no gguf_file: a plain checkpoint
    assert all(torch.equal(reloaded.state_dict()[k], v) for k, v in saved.items())
    assert all(not torch.equal(saved[k], torch.from_numpy(v)) for k, v in source.items()), "every tensor trained"
    [answer] = predict(out, ["reverse abc ="], max_new_tokens=3)
    assert isinstance(answer["output"], str)


def test_a_lora_adapter_on_a_gguf_base_reloads_for_eval_predict_and_merge(tmp_path, recipe_file):
    import torch

    from runner.commands.inference import evaluate_run, load_trained, predict
    from runner.commands.merge import merge
    from runner.commands.run import run
    from test_methods import PROBE, logits

    plan, _ = tiny_run_plan(tmp_path, recipe_file, peft={"method": "lora", "r": 4},
                            evaluation={"metrics": ["loss"]})
    manifest = run(plan, argv=["test"])
    out = tmp_path / "run"
    # peft names only the directory as the adapter's base; it holds no config.json, only the GGUF file
    base = json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert base == plan["model"]["name_or_path"] and not (tmp_path / "m" / "config.json").exists()
    assert json.loads((out / "plan.json").read_text())["model"]["gguf_file"] == NAME  # the run records the file
    again = evaluate_run(plan, out)["after"]["loss"]
    assert again == pytest.approx(manifest["metrics"]["after"]["loss"], rel=1e-4), "the same base reloaded"
    [answer] = predict(out, ["reverse abc ="], max_new_tokens=3)
    assert isinstance(answer["output"], str)
    adapted = load_trained(out, plan)
    with adapted.disable_adapter():
        base_logits = logits(adapted)
    expected = logits(adapted)
    assert (expected - base_logits).abs().max() > 1e-2, "the adapter changes the answers"
    record = merge(out, None)
    assert record["dtype"] == "float32"
    merged = logits_without_peft(tmp_path / "run-merged", PROBE.tolist())  # a fresh process, no peft, no gguf_file
    assert torch.allclose(merged, expected, atol=1e-5), (merged - expected).abs().max()
    assert PROBE.shape[1] == merged.shape[1]
