"""Workarounds for the library versions the runner is tested with, each in one place.

Every entry says which version it is for and how to tell it can go.
"""
from __future__ import annotations


def gguf_load_kwargs(gguf_file: str) -> dict:
    """from_pretrained keyword arguments that load a GGUF file as a plain, trainable, saveable model.

    transformers 5.23 loads a GGUF file through `GgufHfQuantizer`, which keeps the quantizer on the model
    unless told to dequantize: its `is_trainable` is False (the Trainer refuses to fine-tune such a model)
    and its `is_serializable` is False (`save_pretrained` raises "quantized with gguf and is not
    serializable"). With the `kernels` package installed it would even keep the weights in packed GGUF
    blocks. `GgufConfig(dequantize=True)` unpacks every weight and makes transformers drop the quantizer
    and `config.quantization_config` after loading. `plain_gguf_model` checks that it did.
    Can go when a GGUF-loaded model trains and saves without it (GgufHfQuantizer.is_trainable/is_serializable).
    """
    from transformers import GgufConfig

    return {"gguf_file": gguf_file, "quantization_config": GgufConfig(dequantize=True)}


def plain_gguf_model(model):
    """The GGUF-loaded model with no quantizer left on it: what trains, and what save_pretrained writes as
    plain safetensors. Drops what transformers 5.23 keeps when it does not honour `dequantize`
    (`model.hf_quantizer`, `config.quantization_config`: the fix checked by hand on 5.23 before
    GgufConfig(dequantize=True) was used)."""
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False
    packed = sorted({type(m).__name__ for m in model.modules() if type(m).__name__.startswith("Gguf")})
    if packed:  # weights still in GGUF blocks cannot take gradients or be saved as safetensors
        raise RuntimeError(f"the GGUF weights were not dequantized on load (modules {packed}); "
                           "see runner/compat.py gguf_load_kwargs")
    return model
