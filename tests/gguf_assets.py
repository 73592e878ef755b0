"""Small GGUF files written with the `gguf` package (llama.cpp's own writer), for the plan and tiny-model tests.

`write_llama_gguf` stores a Llama state dict the way llama.cpp's converter does: GGUF tensor names,
q/k rows permuted for its rotary layout (transformers undoes that on load), the config as metadata.
No tokenizer is stored: recipes that load these name `model.tokenizer` separately.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

# Hugging Face Llama parameter name (per layer) -> GGUF tensor name
LAYER_NAMES = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
}
TOP_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}


def gguf_name(name: str) -> str:
    if name in TOP_NAMES:
        return TOP_NAMES[name]
    _, _, layer, rest = name.split(".", 3)  # model.layers.<i>.<module>.weight
    module = rest.removesuffix(".weight")
    return f"blk.{layer}.{LAYER_NAMES[module]}.weight"


def permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's q/k row order (convert_hf_to_gguf.py LlamaModel.permute)."""
    return (weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def write_llama_gguf(path: Path, config: dict, state: dict[str, np.ndarray], quantize: str | None = None) -> Path:
    """`state`: HF names -> float32 arrays. `quantize`: a ggml type name ("Q8_0", "F16") for the 2-D weights."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_rope_freq_base(config["rope_theta"])
    writer.add_vocab_size(config["vocab_size"])
    for name, array in state.items():
        if name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = config["num_attention_heads"] if "q_proj" in name else config["num_key_value_heads"]
            array = permute(array, heads)
        array = np.ascontiguousarray(array, dtype=np.float32)
        kind = getattr(gguf.GGMLQuantizationType, quantize) if quantize and array.ndim == 2 else None
        if kind is None:
            writer.add_tensor(gguf_name(name), array)
        elif kind == gguf.GGMLQuantizationType.F16:
            writer.add_tensor(gguf_name(name), array.astype(np.float16))
        else:
            writer.add_tensor(gguf_name(name), gguf.quants.quantize(array, kind), raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def random_llama_state(config: dict, seed: int = 0) -> dict[str, np.ndarray]:
    """Weights of the config's shapes (numpy only, no torch): enough for files the plan reads."""
    rng = np.random.default_rng(seed)
    h, i, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    kv = config["num_key_value_heads"] * (h // config["num_attention_heads"])
    shapes = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,)}
    for layer in range(config["num_hidden_layers"]):
        prefix = f"model.layers.{layer}."
        shapes.update({prefix + "self_attn.q_proj.weight": (h, h), prefix + "self_attn.k_proj.weight": (kv, h),
                       prefix + "self_attn.v_proj.weight": (kv, h), prefix + "self_attn.o_proj.weight": (h, h),
                       prefix + "mlp.gate_proj.weight": (i, h), prefix + "mlp.up_proj.weight": (i, h),
                       prefix + "mlp.down_proj.weight": (h, i), prefix + "input_layernorm.weight": (h,),
                       prefix + "post_attention_layernorm.weight": (h,)})
    return {name: rng.standard_normal(shape).astype(np.float32) * 0.02 for name, shape in shapes.items()}


def tiny_config() -> dict:
    from conftest import TINY_MODEL
    import json

    return json.loads((TINY_MODEL / "config.json").read_text())


TINY_GGUF = "tiny.gguf"


def write_tiny(folder: Path, quantize=None, state=None, name: str = TINY_GGUF) -> Path:
    """The shipped tiny Llama's config with random (or given) weights, as a GGUF file in `folder`."""
    config = tiny_config()
    folder.mkdir(exist_ok=True)
    return write_llama_gguf(folder / name, config, state or random_llama_state(config), quantize)


def gguf_recipe(tmp_path: Path, folder: Path, name: str = TINY_GGUF, model=None, **sections) -> dict:
    """The tiny GGUF as the model; its tokenizer is the shipped tiny one (the file holds none)."""
    from conftest import TINY_MODEL, base_recipe, write_jsonl

    write_jsonl(tmp_path / "train.jsonl", [{"text": "reverse abc = cba"}] * 8)
    model = {"name_or_path": str(folder), "gguf_file": name, "init": "pretrained", "tokenizer": str(TINY_MODEL),
             **(model or {})}
    return base_recipe(tmp_path, model=model, **sections)
