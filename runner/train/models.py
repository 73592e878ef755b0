"""Model and tokenizer from the plan's model spec: pretrained weights, or a fresh model built from a config."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from runner import compat
from runner.errors import Problem, RecipeError
from runner.plan import adapter_runs


def load_tokenizer(spec: dict):
    from transformers import AutoTokenizer

    # a GGUF file carries its tokenizer (vocabulary, merges, chat template) in its metadata
    gguf = {"gguf_file": spec["tokenizer_gguf_file"]} if spec.get("tokenizer_gguf_file") else {}
    tokenizer = hub_call(spec["tokenizer_key"], spec["tokenizer"], AutoTokenizer.from_pretrained, spec["tokenizer"],
                          revision=spec["tokenizer_revision"], trust_remote_code=spec["trust_remote_code"], **gguf)
    if tokenizer.pad_token is None:
        # Batches need a pad token; padded positions are masked out of the loss, so reusing EOS is safe.
        tokenizer.pad_token = tokenizer.eos_token
    if spec.get("chat_template"):  # the recipe's template, for every use of the tokenizer from here on
        with open(spec["chat_template"], encoding="utf-8") as handle:
            tokenizer.chat_template = handle.read()
    return tokenizer


def load_config(spec: dict, updates: dict | None = None):
    from transformers import AutoConfig

    if spec["trust_remote_code"]:
        print(f"warning: trust_remote_code is on: Python code from {spec['name_or_path']} will run in this process",
              file=sys.stderr)
    gguf = {"gguf_file": spec["gguf_file"]} if spec.get("gguf_file") else {}  # the config is the file's metadata
    config = hub_call("/model/gguf_file" if gguf else "/model/name_or_path", spec["name_or_path"],
                       AutoConfig.from_pretrained, spec["name_or_path"], revision=spec["revision"],
                       trust_remote_code=spec["trust_remote_code"], **gguf)
    unknown = [key for key in spec["config_overrides"] if not hasattr(config, key)]
    if unknown:
        raise RecipeError([Problem(f"/model/config_overrides/{key}", f"not an attribute of {type(config).__name__}")
                           for key in unknown])
    # the task's own values (num_labels 1 for a reward model) win over the recipe's; the data's (a label map) over both
    fixed = {**spec["config_overrides"], **spec.get("task_config", {}), **(updates or {})}  # older plans: none
    for key, value in fixed.items():
        setattr(config, key, value)
    return config


def load_model(spec: dict, seed: int, config_updates: dict | None = None, quantize: bool = True):
    """The model named by the plan, in the dtype the recipe asks for: on CPU, or where bitsandbytes
    puts a quantized one (the current accelerator). quantize=False: a random model's unquantized
    weights, which the caller keeps before `quantize_random` quantizes them."""
    import torch
    from transformers import set_seed

    from runner.train.task_code import TASK_CODE

    if spec.get("adapter_run"):
        return load_from_adapter_run(spec, seed, config_updates)
    model_class = TASK_CODE[spec["task"]].model_class()
    config = load_config(spec, config_updates)
    kwargs = {"trust_remote_code": spec["trust_remote_code"]}
    if spec["attn_implementation"] == "runner_varlen":  # chosen by the fast defaults (runner/train/attention.py)
        from runner.train.attention import register

        register()
    if spec["attn_implementation"] is not None:
        kwargs["attn_implementation"] = spec["attn_implementation"]
    # A missing kernel package (flash-attn) surfaces as ImportError or ValueError from either call.
    where = "/model/attn_implementation" if spec["attn_implementation"] else "/model/name_or_path"
    quantization = spec.get("quantization")
    set_seed(seed)  # the same recipe builds the same initial weights (a new head on a checkpoint's too)
    if spec["init"] == "random":
        dtype = torch.float32 if spec["dtype"] in ("auto", None) else getattr(torch, spec["dtype"])
        # A base to be quantized is built where bitsandbytes will put it: initialising 8B weights on a GPU
        # takes seconds, on a CPU minutes. (The same seed gives other numbers on another device.)
        with torch.device(_quantization_device() if quantization else "cpu"):
            model = hub_call(where, spec["name_or_path"], model_class.from_config, config, dtype=dtype, **kwargs)
        return quantize_random(model, spec) if quantization and quantize else model
    if quantization:
        kwargs["quantization_config"] = bnb_config(quantization)
    if not spec.get("allow_pickle_weights"):
        kwargs["use_safetensors"] = True  # a pickled checkpoint can run code when loaded
    if spec.get("ignore_mismatched_sizes"):
        kwargs["ignore_mismatched_sizes"] = True  # a checkpoint's head for other labels is replaced, not an error
    if spec.get("gguf_file"):
        kwargs.update(compat.gguf_load_kwargs(spec["gguf_file"]))
        where = "/model/gguf_file" if where == "/model/name_or_path" else where
    model = hub_call(where, spec["name_or_path"], model_class.from_pretrained,
                      spec["name_or_path"], config=config, revision=spec["revision"], dtype=spec["dtype"] or "auto",
                      **kwargs)
    return compat.plain_gguf_model(model) if spec.get("gguf_file") else model


def load_from_adapter_run(spec: dict, seed: int, config_updates: dict | None = None):
    """The start model an earlier adapter run makes (runner/plan/adapter_runs.py): its adapter merged into its base,
    or loaded onto it to train on (a quantized base prepared for k-bit training first, as for a new adapter)."""
    from peft import PeftConfig, PeftModel

    run = spec["adapter_run"]
    changed = adapter_runs.changed_adapter(run)
    if changed:
        raise RecipeError(changed)
    base = load_model(adapter_runs.base_to_load(spec), seed, config_updates)
    if run["mode"] == "train":
        if is_quantized(base):
            base = compat.prepare_quantized_base(base)
        return hub_call("/model/name_or_path", run["run_dir"], PeftModel.from_pretrained, base, run["run_dir"],
                        is_trainable=True)
    # without its task type: a causal LM's adapter sits on the transformer blocks a reward model shares too
    config = PeftConfig.from_pretrained(run["run_dir"])
    config.task_type = None
    merged = hub_call("/model/name_or_path", run["run_dir"], PeftModel.from_pretrained, base, run["run_dir"],
                      config=config).merge_and_unload()
    merged.requires_grad_(True)  # peft froze the base for inference; what trains is for the recipe's peft to say
    # a new adapter records the run as its base: it loads back onto this merged model (runner/commands/finished.py)
    merged.config._name_or_path = merged.name_or_path = run["run_dir"]
    return quantize_random(merged, spec) if spec.get("quantization") else merged


def load_with_adapter(run_dir: Path, model_spec: dict, seed: int, config_updates: dict | None = None):
    """A run's saved adapter on the base it was trained on (runner/plan/adapter_runs.py base_spec decides which, for
    `plan` too), loaded in the load settings of the run's model spec (which `merge` and `quantize` adjust)."""
    from peft import PeftModel

    recorded = json.loads((run_dir / adapter_runs.ADAPTER_FILE).read_text())["base_model_name_or_path"]
    base = {**adapter_runs.base_spec({"model": model_spec, "adapter_base": recorded}),
            **adapter_runs.load_settings(model_spec)}
    return PeftModel.from_pretrained(load_model(base, seed, config_updates), run_dir)


def is_quantized(model) -> bool:
    """Its weights are bitsandbytes 4- or 8-bit blocks."""
    return getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False)


def _quantization_device():
    import torch

    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def bnb_config(quantization: dict):
    """transformers' BitsAndBytesConfig from the plan's kwargs (dtypes are names there)."""
    import torch
    from transformers import BitsAndBytesConfig

    kwargs = dict(quantization["kwargs"])
    for key in ("bnb_4bit_compute_dtype", "bnb_4bit_quant_storage"):
        if key in kwargs:
            kwargs[key] = getattr(torch, kwargs[key])
    return BitsAndBytesConfig(**kwargs)


def quantize_random(model, spec: dict):
    """A model built from a config (random weights), quantized as `from_pretrained` would quantize a checkpoint.

    from_config takes no quantization_config; from_pretrained with the weights as a state_dict does,
    and writes nothing to disk (a random 8B base would be 16 GB).
    """
    state = model.state_dict()
    quantized = type(model).from_pretrained(None, config=model.config, state_dict=state, dtype=model.dtype,
                                            quantization_config=bnb_config(spec["quantization"]))
    # where the weights came from (peft records it as the adapter's base); from_pretrained(None) forgets it
    quantized.config._name_or_path = quantized.name_or_path = model.name_or_path
    return quantized


def _numel(parameter) -> int:
    """Parameters, not storage elements: a 4-bit tensor packs two weights per byte of its storage dtype."""
    if parameter.__class__.__name__ == "Params4bit":
        return parameter.numel() * 2 * parameter.element_size()
    return parameter.numel()


def count_parameters(model) -> dict:
    total = sum(_numel(p) for p in model.parameters())
    trainable = sum(_numel(p) for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable, "trainable_share": round(trainable / total, 6) if total else 0.0}


def hub_call(where: str, name: str, fn, *args, **kwargs):
    """Call a from_pretrained-like function; a missing or unreachable model is the user's to fix."""
    try:
        return fn(*args, **kwargs)
    except (OSError, ValueError, ImportError) as exc:
        hint = None
        if os.environ.get("HF_HUB_OFFLINE") == "1":
            hint = "HF_HUB_OFFLINE=1 is set: only models already in the local cache or on disk can be loaded"
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise RecipeError([Problem(where, f"cannot load '{name}': {first}", hint)]) from None
