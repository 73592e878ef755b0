"""GGUF files for the plan, without torch: the header, the config it implies, and the recipe checks.

A GGUF file (llama.cpp's format) holds the config as metadata and the weights as quantized blocks.
transformers builds the config from that metadata and dequantizes the weights on load; the plan
only needs the metadata and the tensor table, read here with `struct` (the `gguf` package's reader
parses every tensor and takes seconds; transformers' own imports torch).
Layout (GGUF v2/v3): magic, version, tensor count, metadata count, metadata key/values, tensor table.
"""
from __future__ import annotations

import functools
import mmap
import os
import struct
from pathlib import Path

from runner.errors import Problem

MAGIC = b"GGUF"
VERSIONS = (2, 3)  # v1 counted in 32 bits; transformers reads only v2 and v3
# metadata value types of fixed width (8 is a string, 9 an array)
SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
STRING, ARRAY = 8, 9
# ggml tensor types that hold plain floats
FLOATS = {0: "float32", 1: "float16", 30: "bfloat16"}
# transformers 5.23 reads these architectures with its newer GGUF loader, where `dtype: auto` is the file's own
# half type when no tensor is quantized; every other one (llama, qwen2, qwen3, ...) goes through its legacy
# loader, which dequantizes to float32 and resolves `auto` to float32 (integrations/gguf GGUF_ARCHS).
HALF_AUTO_ARCHITECTURES = ("qwen35", "qwen35moe", "lfm2")
TYPE_NAMES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1", 10: "Q2_K",
              11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 24: "I8", 25: "I16", 26: "I32",
              27: "I64", 28: "F64", 30: "BF16"}
# GGUF architectures whose metadata maps onto the Hugging Face config keys the estimators read
# (transformers' integrations/gguf config mapping names the same keys); others plan as "unknown".
DECODER_ARCHITECTURES = ("llama", "qwen2", "qwen3")
CONFIG_KEYS = {  # GGUF "<architecture>.<key>" -> Hugging Face config key
    "context_length": "max_position_embeddings", "embedding_length": "hidden_size",
    "feed_forward_length": "intermediate_size", "block_count": "num_hidden_layers",
    "attention.head_count": "num_attention_heads", "attention.head_count_kv": "num_key_value_heads",
    "attention.key_length": "head_dim", "attention.layer_norm_rms_epsilon": "rms_norm_eps",
    "rope.freq_base": "rope_theta", "vocab_size": "vocab_size",
}


class NotGguf(ValueError):
    """The file is not a GGUF file this runner (and transformers) can read."""


def read_header(path: Path) -> dict:
    """{"architecture", "metadata" (scalars and strings), "array_lengths", "tensor_types" (name -> ggml type)}."""
    stat = path.stat()
    return _read_header(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)  # the plan's checks and its config read the same file
def _read_header(path: str, size: int, mtime_ns: int) -> dict:
    with open(path, "rb") as handle:
        if size < 24 or handle.read(4) != MAGIC:
            raise NotGguf("does not start with the GGUF magic bytes")
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as blob:
            try:
                return _parse(blob)
            except (struct.error, UnicodeDecodeError, KeyError) as exc:
                raise NotGguf(f"its header is damaged or truncated ({type(exc).__name__})") from None


def _parse(blob) -> dict:
    version, tensor_count, kv_count = struct.unpack_from("<IQQ", blob, 4)
    if version not in VERSIONS:
        raise NotGguf(f"GGUF version {version}; transformers reads versions {VERSIONS}")
    pos, metadata, arrays = 24, {}, {}
    for _ in range(kv_count):
        key, pos = _string(blob, pos)
        (kind,) = struct.unpack_from("<I", blob, pos)
        pos += 4
        if kind == ARRAY:
            (item_kind, count), pos = struct.unpack_from("<IQ", blob, pos), pos + 12
            arrays[key] = count
            pos = _skip_items(blob, pos, item_kind, count)
        else:
            metadata[key], pos = _value(blob, pos, kind)
    tensor_types = {}
    for _ in range(tensor_count):
        name, pos = _string(blob, pos)
        (dims,) = struct.unpack_from("<I", blob, pos)
        pos += 4 + 8 * dims
        (tensor_types[name],) = struct.unpack_from("<I", blob, pos)
        pos += 12  # type, then the offset of its data
    return {"architecture": metadata["general.architecture"], "metadata": metadata, "array_lengths": arrays,
            "tensor_types": tensor_types}


def _string(blob, pos: int) -> tuple[str, int]:
    (length,) = struct.unpack_from("<Q", blob, pos)
    pos += 8
    if pos + length > len(blob):
        raise struct.error("string runs past the end of the file")
    return bytes(blob[pos:pos + length]).decode("utf-8"), pos + length


def _value(blob, pos: int, kind: int):
    if kind == STRING:
        return _string(blob, pos)
    fmt = SCALARS[kind]  # KeyError: an unknown type, i.e. a damaged header
    return struct.unpack_from(fmt, blob, pos)[0], pos + struct.calcsize(fmt)


def _skip_items(blob, pos: int, kind: int, count: int) -> int:
    if kind in SCALARS:
        return pos + count * struct.calcsize(SCALARS[kind])
    if kind != STRING:
        raise KeyError(kind)  # arrays of arrays: no file transformers loads has them
    for _ in range(count):  # a vocabulary: skip each string by its length
        pos += 8 + struct.unpack_from("<Q", blob, pos)[0]
    return pos


# --- what the plan reads ---------------------------------------------------------------------


def auto_dtype(header: dict) -> str:
    """What transformers loads this file's weights as under `dtype: auto`."""
    types = set(header["tensor_types"].values())
    if header["architecture"] not in HALF_AUTO_ARCHITECTURES or not types <= set(FLOATS):
        return "float32"  # dequantized blocks, or the legacy loader: float32
    for half in (30, 1):  # the norms stay F32 beside half-precision weights: the half type is the model's
        if half in types:
            return FLOATS[half]
    return "float32"


def config_from_header(header: dict) -> dict | None:
    """The Hugging Face config keys the estimators read, for the decoder architectures mapped here; else None."""
    arch = header["architecture"]
    if arch not in DECODER_ARCHITECTURES:
        return None
    metadata = header["metadata"]
    config = {"model_type": arch, "dtype": auto_dtype(header),
              # transformers ties the embeddings exactly when the file has no separate output matrix
              "tie_word_embeddings": "output.weight" not in header["tensor_types"]}
    config.update({hf: metadata[f"{arch}.{key}"] for key, hf in CONFIG_KEYS.items() if f"{arch}.{key}" in metadata})
    if "vocab_size" not in config and "tokenizer.ggml.tokens" in header["array_lengths"]:
        config["vocab_size"] = header["array_lengths"]["tokenizer.ggml.tokens"]
    return config


def summary(header: dict) -> dict:
    """The file's architecture and how many tensors of each storage type it holds, for `plan`."""
    counts: dict[str, int] = {}
    for kind in header["tensor_types"].values():
        name = TYPE_NAMES.get(kind, f"ggml type {kind}")
        counts[name] = counts.get(name, 0) + 1
    return {"architecture": header["architecture"], "tensor_types": dict(sorted(counts.items())),
            "quantized": not set(header["tensor_types"].values()) <= set(FLOATS)}


def weights_dtype(model: dict, header: dict | None) -> dict:
    """The dtype the dequantized weights are loaded and trained in, and why (`model.dtype` still applies)."""
    auto = auto_dtype(header) if header else None
    auto_why = "read from the file at load time"
    if header:
        auto_why = ("quantized GGUF blocks dequantize to float32" if summary(header)["quantized"] else
                    "the file's own float type" if header["architecture"] in HALF_AUTO_ARCHITECTURES else
                    f"transformers loads '{header['architecture']}' GGUF files in float32")
    dtype = model["dtype"]
    if dtype not in (None, "auto"):
        return {"dtype": dtype, "why": "model.dtype (the dequantized weights are cast to it)"}
    if dtype == "auto":
        return {"dtype": auto, "why": f"model.dtype auto: {auto_why}"}
    return {"dtype": None, "why": f"model.dtype null, decided at launch (fast_defaults): bfloat16 when training "
                                  f"runs in bf16, else auto ({auto or 'the file'}: {auto_why})"}


# --- where the file is, and the recipe checks -------------------------------------------------


def locate(model: dict) -> Path | None:
    """The GGUF file on this machine: inside the local model directory, or in the Hub cache; None if not here."""
    location = Path(model["name_or_path"])
    if location.is_absolute():
        return location / model["gguf_file"]
    hub = os.environ.get("HF_HUB_CACHE") or str(Path(os.environ.get("HF_HOME", "~/.cache/huggingface")) / "hub")
    repo = Path(hub).expanduser() / ("models--" + model["name_or_path"].replace("/", "--"))
    ref = repo / "refs" / model["revision"]
    commit = ref.read_text().strip() if ref.is_file() else model["revision"]
    found = repo / "snapshots" / commit / model["gguf_file"]
    return found if found.is_file() else None


def check(model: dict) -> list[Problem]:
    """Settings a GGUF file cannot go with, and a file that is missing or unreadable, before anything loads."""
    name = model["gguf_file"]
    if model["quantization"]["method"] != "none":
        return [Problem("/model/gguf_file", "GGUF weights are dequantized on load and cannot also be loaded "
                                            f"through bitsandbytes ({model['quantization']['method']})",
                        "remove model.quantization (or set its method to none), or load a safetensors "
                        "checkpoint instead of the GGUF file")]
    if model["init"] == "random":
        return [Problem("/model/gguf_file", "init: random builds the model from its config and reads no weights",
                        "remove gguf_file, or set model.init to pretrained")]
    if Path(name).is_absolute() or name.startswith("~") or ".." in Path(name).parts:
        return [Problem("/model/gguf_file", f"{name!r} must name a file inside model.name_or_path",
                        "set name_or_path to the file's directory (or Hub repository) and gguf_file to its name")]
    path = locate(model)
    if not Path(model["name_or_path"]).is_absolute():
        return []  # a Hub file not cached yet: transformers downloads (or, offline, reports) it at load time
    if not path.is_file():
        present = sorted(p.name for p in Path(model["name_or_path"]).glob("*.gguf"))
        return [Problem("/model/gguf_file", f"no file {name!r} in {model['name_or_path']}",
                        f"GGUF files there: {', '.join(present)}" if present else "that directory holds no .gguf file")]
    try:
        read_header(path)
    except (NotGguf, OSError) as exc:
        return [Problem("/model/gguf_file", f"{path} is not a readable GGUF file: {exc}")]
    return []


def read_config(model: dict) -> tuple[dict | None, str, dict | None]:
    """(config or None, where it came from or why not, the header or None), as plan.read_model_config answers."""
    path = locate(model)
    if path is None:
        return None, f"{model['gguf_file']} of {model['name_or_path']} is not on this machine yet", None
    try:
        header = read_header(path)
    except (NotGguf, OSError) as exc:
        return None, f"cannot read {path}: {exc}", None
    config = config_from_header(header)
    if config is None:
        return None, f"GGUF architecture '{header['architecture']}' is not one the plan maps to a config", header
    return config, f"{path} (GGUF metadata)", header
