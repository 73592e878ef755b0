"""Every tuning method trains for real on the tiny Llama; combinations that cannot work are refused.

Each run asserts that only the intended parameters changed (adapter changed, base bit-identical),
that the saved adapter reloads on its base and gives the same logits, and, for LoRA-family methods,
that `merge` gives a plain model with the logits of base + adapter.
"""
from __future__ import annotations

import json

import pytest
import torch

from assets import reverse_rows
from fresh_process import logits_without_peft
from conftest import ROOT, base_recipe, write_jsonl
from runner.plan import estimate
from runner.train import models
from runner.errors import RecipeError
from runner.commands.inference import load_trained
from runner.commands.merge import merge
from runner.plan.build import build_plan
from runner.commands.quantize import quantize
from runner.recipe.load import load_recipe
from runner.commands.run import prepare, train

ROWS = reverse_rows(48, seed=11)
DATA = {"format": "prompt_completion", "train": {"path": "train.jsonl"}}
# fp32: after training in bf16 autocast the in-memory model keeps accelerate's autocast wrapper, a reloaded one
# computes in fp32, and these tests compare the two to the last digits (the launch decides bf16 on such CPUs)
STEPS = {"max_steps": 3, "learning_rate": 2e-2, "per_device_train_batch_size": 16, "bf16": False}
PROBE = torch.tensor([[1, 50, 60, 70, 80, 90, 100, 110]])


def plan_for(tmp_path, recipe_file, **sections):
    write_jsonl(tmp_path / "train.jsonl", ROWS)
    sections.setdefault("data", DATA)
    sections["training"] = {**STEPS, **sections.get("training", {})}
    return build_plan(load_recipe(recipe_file(base_recipe(tmp_path, **sections))))


def logits(model):
    model.eval()
    with torch.no_grad():
        return model(input_ids=PROBE).logits.float()


def snapshot(model) -> dict:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def train_and_compare(plan):
    """Train; return (trainable names, frozen names, changed names, the trained model's probe logits)."""
    prepared = prepare(plan)
    model = prepared.trainer.model
    before = snapshot(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    manifest = train(plan, prepared, ["test"])
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    return trainable, set(before) - trainable, changed, logits(model), manifest


ADAPTERS = {
    "lora-dora-rslora": {"method": "lora", "r": 4, "use_dora": True, "use_rslora": True,
                         "init_lora_weights": "gaussian", "target_modules": ["q_proj", "v_proj", "down_proj"]},
    "lora-regex": {"method": "lora", "r": 4, "target_modules": r".*\.layers\.(1|2)\.self_attn\.(q|k)_proj"},
    "prompt_tuning-text": {"method": "prompt_tuning", "num_virtual_tokens": 4, "prompt_tuning_init": "TEXT",
                           "prompt_tuning_init_text": "reverse"},
    "prefix_tuning": {"method": "prefix_tuning", "num_virtual_tokens": 4, "prefix_projection": True},
    "ia3": {"method": "ia3"},
}


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_each_adapter_trains_only_itself_and_reloads(tmp_path, recipe_file, name):
    plan = plan_for(tmp_path, recipe_file, peft=ADAPTERS[name])
    trainable, frozen, changed, trained_logits, manifest = train_and_compare(plan)
    assert trainable and changed == trainable, "every adapter tensor moved, nothing else"
    assert frozen and not changed & frozen, "the base is bit-identical"
    # no closed form for regex targets and IA3: the plan says "unknown" there, run.json has the count
    assert plan["parameters"]["known"] is (name not in ("lora-regex", "ia3"))
    if plan["parameters"]["known"]:
        assert plan["parameters"]["trainable"] == manifest["parameters"]["trainable"]
        assert plan["parameters"]["total"] == manifest["parameters"]["total"]
    out = tmp_path / "run"
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == {"lora": "LORA", "prompt": "PROMPT_TUNING", "prefix": "PREFIX_TUNING",
                                   "ia3": "IA3"}[name.split("-")[0].split("_")[0]]
    assert config["base_model_name_or_path"] == str(out / "base_model") and config["revision"] == "main"
    reloaded = load_trained(out, plan)
    assert torch.allclose(logits(reloaded), trained_logits, atol=1e-5), "save -> reload gives the same outputs"


def test_regex_targets_reach_only_the_modules_they_match(tmp_path, recipe_file):
    plan = plan_for(tmp_path, recipe_file, peft=ADAPTERS["lora-regex"])
    model = prepare(plan).trainer.model
    adapted = sorted({n.split(".lora_")[0].removeprefix("base_model.model.") for n, _ in model.named_parameters()
                      if "lora_" in n})
    assert adapted == [f"model.layers.{i}.self_attn.{m}_proj" for i in (1, 2) for m in ("k", "q")]


@pytest.mark.parametrize("method", ["bnb_4bit", "bnb_8bit"])
def test_quantized_base_with_lora_then_merge(tmp_path, recipe_file, method):
    """QLoRA (and 8-bit LoRA) on CPU: the packed base stays bit-identical; merge writes a plain model."""
    quant = {"method": method, **({"bnb_4bit_compute_dtype": "float32"} if method == "bnb_4bit" else {})}
    plan = plan_for(tmp_path, recipe_file, model={"quantization": quant}, peft={"method": "lora", "r": 4})
    trainable, frozen, changed, trained_logits, manifest = train_and_compare(plan)
    assert changed == trainable and all("lora_" in n for n in trainable)
    assert not changed & frozen
    model_class = {"bnb_4bit": "Linear4bit", "bnb_8bit": "Linear8bitLt"}[method]
    out = tmp_path / "run"
    reloaded = load_trained(out, plan)
    assert type(reloaded.base_model.model.model.layers[0].self_attn.q_proj.base_layer).__name__ == model_class
    for name, parameter in reloaded.named_parameters():  # TRL trains a quantized model's adapter in bf16;
        if "lora_" in name:  # peft reloads it in float32: compare like with like
            parameter.data = parameter.data.to(torch.bfloat16)
    assert torch.allclose(logits(reloaded), trained_logits, atol=1e-5), "reload quantizes the same base again"
    assert manifest["parameters"]["total"] == plan["parameters"]["total"], "4-bit tensors counted as weights"

    record = merge(out, None)
    assert ("not the 4-bit weights" if method == "bnb_4bit" else "trained on 8-bit weights") in record["note"]
    # base + adapter at full precision (what merge folds together) vs the merged model, without peft
    full = {**plan, "model": {**plan["model"], "quantization": None}}
    expected = logits(load_trained(out, full))
    merged = logits_without_peft(tmp_path / "run-merged", PROBE.tolist())
    assert torch.allclose(merged, expected, atol=1e-4), (merged - expected).abs().max()
    # the quantized training model differs from the merged one only by quantization error
    assert (merged - trained_logits).abs().max() < 0.5
    with pytest.raises(RecipeError, match="already exists"):
        merge(out, None)


def test_quantize_reports_size_and_metric_before_and_after(tmp_path, recipe_file):
    plan = plan_for(tmp_path, recipe_file, data={**DATA, "eval": {"path": "train.jsonl"}},
                    training={"eval_strategy": "no"}, evaluation={"metrics": ["loss"]})
    train(plan, prepare(plan), ["test"])
    with pytest.raises(RecipeError, match="no adapter to merge"):
        merge(tmp_path / "run", None)
    record = quantize(tmp_path / "run", 8, None)
    assert record["after"]["disk_bytes"] < 0.5 * record["before"]["disk_bytes"]
    assert record["after"]["memory_bytes"] < record["before"]["memory_bytes"]
    before, after = record["metrics"]["before"]["loss"], record["metrics"]["after"]["loss"]
    assert before != after and abs(before - after) < 0.1 * before, (before, after)
    saved = json.loads((tmp_path / "run-8bit" / "config.json").read_text())
    assert saved["quantization_config"]["load_in_8bit"] is True
    assert json.loads((tmp_path / "run-8bit" / "quantize.json").read_text())["bits"] == 8


def test_soft_prompts_cannot_be_merged(tmp_path, recipe_file):
    plan = plan_for(tmp_path, recipe_file, peft={"method": "prompt_tuning", "num_virtual_tokens": 2},
                    training={"max_steps": 1})
    train(plan, prepare(plan), ["test"])
    with pytest.raises(RecipeError, match="no weights to merge"):
        merge(tmp_path / "run", None)


# --- refused in the plan, each seen failing (or training nothing) when allowed -----------------


@pytest.mark.parametrize("sections, path, fragment", [
    ({"model": {"quantization": {"method": "bnb_4bit"}}}, "/model/quantization/method", "cannot be trained"),
    ({"model": {"quantization": {"method": "bnb_8bit"}}, "peft": {"method": "partial", "trainable": ["norm"]}},
     "/model/quantization/method", "partial fine-tuning"),
    ({"model": {"quantization": {"method": "bnb_4bit"}}, "peft": {"method": "lora", "init_lora_weights": "pissa"}},
     "/peft/init_lora_weights", "quantized"),
    ({"peft": {"method": "prefix_tuning"}, "training": {"activation_checkpointing": True}},
     "/training/activation_checkpointing", "key/value cache"),
    ({"peft": {"method": "prompt_tuning"}, "training": {"packing": True}}, "/training/packing", "position ids"),
    ({"peft": {"method": "prompt_tuning", "prompt_tuning_init": "TEXT"}}, "/peft/prompt_tuning_init_text", "needs"),
    ({"peft": {"method": "prefix_tuning", "encoder_hidden_size": 8}}, "/peft/encoder_hidden_size", "prefix_projection"),
    ({"peft": {"method": "ia3", "target_modules": ["k_proj"], "feedforward_modules": ["down_proj"]}},
     "/peft/feedforward_modules/0", "not in target_modules"),
    ({"peft": {"method": "lora", "target_modules": "q_proj"}}, "/peft/target_modules", "matches no linear module"),
    ({"peft": {"method": "lora", "target_modules": ["q_proj", "lm_head"]}}, "/peft/target_modules", "lm_head"),
])
def test_impossible_combinations_are_refused_with_the_reason(tmp_path, recipe_file, sections, path, fragment):
    with pytest.raises(RecipeError) as err:
        plan_for(tmp_path, recipe_file, **sections)
    found = {p.path: p.message for p in err.value.problems}
    assert path in found and fragment in found[path], found


@pytest.mark.parametrize("peft, key, owner", [
    ({"method": "prompt_tuning", "r": 8}, "/peft/r", "'r' belongs to method ['lora'], not 'prompt_tuning'"),
    ({"method": "lora", "num_virtual_tokens": 8}, "/peft/num_virtual_tokens", "belongs to method"),
])
def test_a_key_of_another_method_names_its_owner(tmp_path, recipe_file, peft, key, owner):
    with pytest.raises(RecipeError) as err:
        plan_for(tmp_path, recipe_file, peft=peft)
    found = {p.path: (p.message, p.hint) for p in err.value.problems}
    assert found[key][0] == "not allowed here" and owner in found[key][1]


@pytest.mark.parametrize("quant, key", [
    ({"method": "none", "bnb_4bit_quant_type": "nf4"}, "bnb_4bit_quant_type"),
    ({"method": "bnb_8bit", "bnb_4bit_use_double_quant": True}, "bnb_4bit_use_double_quant"),
    ({"method": "bnb_4bit", "llm_int8_threshold": 6.0}, "llm_int8_threshold"),
])
def test_quantization_keys_belong_to_their_method(tmp_path, recipe_file, quant, key):
    with pytest.raises(RecipeError) as err:
        plan_for(tmp_path, recipe_file, model={"quantization": quant}, peft={"method": "lora"})
    found = {p.path: p.hint for p in err.value.problems}
    assert "belongs to method" in found[f"/model/quantization/{key}"]


# --- parameter counts: the closed forms against peft's own count --------------------------------

SHAPES = {"llama-gqa": {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100},
          "qwen3": {"model_type": "qwen3", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 24, "vocab_size": 100}}
COUNTED = [
    {"method": "lora", "r": 4, "target_modules": "all-linear", "use_dora": True},
    {"method": "lora", "r": 2, "target_modules": ["q_proj", "down_proj"], "use_dora": False},
    {"method": "prompt_tuning", "num_virtual_tokens": 5},
    {"method": "prefix_tuning", "num_virtual_tokens": 3, "prefix_projection": False},
    {"method": "prefix_tuning", "num_virtual_tokens": 3, "prefix_projection": True, "encoder_hidden_size": 16},
    {"method": "prefix_tuning", "num_virtual_tokens": 3, "prefix_projection": True},
    {"method": "ia3", "target_modules": ["k_proj", "v_proj", "down_proj"], "feedforward_modules": ["down_proj"]},
]


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("index", range(len(COUNTED)))
def test_adapter_parameter_counts_match_peft(shape, index):
    from peft import get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    from runner.train.adapters import peft_config

    raw, peft = SHAPES[shape], dict(COUNTED[index])
    defaults = {"bias": "none", "init_lora_weights": True, "modules_to_save": None, "encoder_hidden_size": None}
    spec = {**{k: v for k, v in defaults.items() if k in ("bias", "init_lora_weights", "modules_to_save")
               and peft["method"] == "lora"}, **peft}
    if peft["method"] == "prefix_tuning":
        spec.setdefault("encoder_hidden_size", None)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**raw))
    kwargs = {k: v for k, v in peft.items() if k != "method"}
    wrapped = get_peft_model(model, peft_config({"method": peft["method"], "kwargs": {"task_type": "CAUSAL_LM", **kwargs}}))
    trainable, total = wrapped.get_nb_trainable_parameters()
    assert estimate.adapter_parameters(raw, spec) == trainable
    assert models.count_parameters(wrapped)["trainable"] == trainable


def test_headline_qlora_recipe_plans_with_expert_settings():
    plan = build_plan(load_recipe(str(ROOT / "recipes" / "sft_qlora.json")))
    quant = plan["model"]["quantization"]["kwargs"]
    assert quant == {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
                     "bnb_4bit_compute_dtype": "bfloat16", "bnb_4bit_quant_storage": "uint8"}
    assert plan["peft"]["kwargs"]["target_modules"] == "all-linear"
    config = plan["trainer"]["config"]
    assert config["optim"] == "paged_adamw_8bit" and config["activation_checkpointing"] and config["packing"]
