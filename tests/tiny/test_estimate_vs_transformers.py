"""The plan's estimates against the libraries: parameter counts against transformers and peft models built from
configs, and the per-layer activation count against the tensors autograd really saves."""
from __future__ import annotations

import pytest

from conftest import load_bench
from runner.plan import estimate

CONFIGS = {
    "llama": {"model_type": "llama", "tie_word_embeddings": False, "attention_bias": True, "mlp_bias": True},
    "llama-mha": {"model_type": "llama"},  # no num_key_value_heads: llama defaults it to the head count
    "mistral": {"model_type": "mistral", "num_key_value_heads": 1},
    "qwen2": {"model_type": "qwen2", "tie_word_embeddings": True, "num_key_value_heads": 2},
    "qwen3": {"model_type": "qwen3", "head_dim": 24, "num_key_value_heads": 2},
}

SHAPE = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
         "vocab_size": 100}


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("lora", [None, "all-linear", ["q_proj", "self_attn.v_proj", "down_proj", "lm_head"]])
def test_parameter_estimate_matches_transformers_and_peft(name, lora):
    """Counts from the raw config.json equal those of the model transformers builds (and peft wraps)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    raw = {**SHAPE, **CONFIGS[name]}  # what a config.json holds: no class defaults filled in
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**raw))
    expected_total = estimate.total_parameters(raw)
    if lora:
        model = get_peft_model(model, LoraConfig(r=4, target_modules=lora, task_type="CAUSAL_LM"))
        expected_total += estimate.lora_parameters(raw, 4, lora)
        assert sum(p.numel() for p in model.parameters() if p.requires_grad) == \
            estimate.lora_parameters(raw, 4, lora)
    assert sum(p.numel() for p in model.parameters()) == expected_total


def test_layer_count_matches_saved_tensors_of_a_real_model():
    """runner.plan.activations' per-layer and LM-head counts against what autograd really keeps: a transformers Llama
    (h 128, i 344, 4 heads, 2 KV heads, 3 layers; rows of 2 x 160 tokens; and a Qwen3) under bf16 autocast,
    one forward pass through TRL's fused head, every saved tensor recorded by saved_tensors_hooks
    (bench/saved_activations.py). The HF layers only: Liger and the varlen kernel need a GPU. Tolerance 1% (the count is exact on these cases; the head's int64 indices
    of the selected positions are left out of the count)."""
    bench = load_bench("saved_activations")
    config = {**bench.SMALL, "hidden_size": 128, "intermediate_size": 344, "num_hidden_layers": 3,
              "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512}
    qwen3 = {**config, "model_type": "qwen3", "head_dim": 32}  # per-head q/k norms
    cases = [(config, case) for case in bench.CASES]  # weights bf16 / fp32, LoRA, padded / packed / one row, eager,
    cases += [(qwen3, case) for case in ("bf16", "fp32_weights", "bf16_lora")]  # checkpointing
    for model_config, case in cases:
        measured = bench.measure(case, config=model_config, length=160)
        estimated = bench.estimate(case, config=model_config, length=160)
        for key in ("per_layer_per_token", "head_per_token"):
            assert estimated[key] == pytest.approx(measured[key], rel=0.01), (case, key, measured, estimated)
