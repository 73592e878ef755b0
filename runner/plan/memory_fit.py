"""The plan's memory section: the recipe's settings -> runner.plan.memory's estimate -> "fits on N GiB" lines.

    plan["memory"] = {"topology": {...},
                      "per_device_gib": {"activation_checkpointing_on": x, "activation_checkpointing_off": y},
                      "parts_gib": {...}, "peak_at": "...", "assumptions": [...], "fit": [...]}

`per_device_gib` is what must be free on each GPU: the estimated peak of PyTorch's allocator plus its
slack and the CUDA context. None where the model's shapes are unknown. Settings the recipe leaves to the
launch (Liger, packing, attention, dtype, optimizer) are assumed here and listed in `assumptions`; the
section keeps its inputs (`estimate_inputs`: the config's shape keys and the settings), so launch-time
code recomputes the figure for the values it decides (`need_for`, via decisions.memory_as_decided) before
comparing it with the GPU it lands on.
"""
from __future__ import annotations

import json
from dataclasses import fields, replace
from pathlib import Path

from runner.plan import estimate, memory, rewards
from runner.recipe import schema
from runner.plan.memory import GIB, Settings
from runner.plan.methods import method_of
from runner.plan.topology import Topology

# the suggestions' adapter and quantized base: the schema's defaults for peft.method lora and model.quantization
LORA = {**schema.defaults_of("lora"), "method": "lora"}
QLORA = {**schema.defaults_of("bnb_4bit"), "method": "bnb_4bit"}
ZERO3_GPUS = 8  # the usual machine: ZeRO-3 is suggested across this many GPUs when the run has fewer
# the config.json keys the estimate reads (runner.plan.estimate, runner.plan.memory, runner.plan.activations)
CONFIG_KEYS = ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "head_dim", "vocab_size", "tie_word_embeddings", "attention_bias", "mlp_bias")


def memory_section(doc: dict, config: dict | None, kind: str, reference: str | None,
                   topology: Topology | None = None, source: str = "the model's config.json could not be read") -> dict:
    topology = topology or Topology()
    unknown = {"topology": topology.to_dict(),
               "per_device_gib": {"activation_checkpointing_on": None, "activation_checkpointing_off": None}}
    if config is None:
        return {**unknown, "why": source}
    settings, assumptions = settings_from_recipe(doc, config, kind, reference, topology)
    if settings is None:
        return {**unknown, "why": assumptions[0]}
    on, off = (memory.peak(config, replace(settings, activation_checkpointing=flag)) for flag in (True, False))
    if on is None:
        return {**unknown, "why": f"architecture '{config.get('model_type')}' is not in the estimator "
                                  "(llama, mistral, qwen2, qwen3)"}
    chosen = on if settings.activation_checkpointing else off
    return {
        # what launch-time code needs to recompute the estimate for the settings it decides (need_for)
        "estimate_inputs": {"config": {k: config[k] for k in CONFIG_KEYS if k in config},
                            "settings": settings_to_dict(settings), "auto_dtype": auto_dtype(doc["model"], config)},
        "topology": topology.to_dict(),
        "per_device_gib": {"activation_checkpointing_on": need_gib(on), "activation_checkpointing_off": need_gib(off)},
        "peak_allocated_gib": round(chosen["peak_bytes"] / GIB, 2),
        "peak_at": chosen["peak_at"],
        "parts_gib": {k: round(v / GIB, 3) for k, v in chosen["parts"].items()},
        "tokens_per_micro_batch": chosen["tokens_per_micro_batch"],
        "assumptions": assumptions + [
            f"needed = peak allocated x {1 + memory.ALLOCATOR_SLACK:g} (allocator slack) + {memory.CONTEXT_GIB} GiB "
            "(CUDA context)",
            activation_line(doc["training"].get("activation_checkpointing")),
            "settings left null are decided at launch, where the estimate is recomputed for the values decided "
            "(fast defaults) before activation checkpointing is chosen"],
        "fit": fit_lines(config, settings),
    }


def activation_line(recipe_value: bool | None) -> str:
    if recipe_value is None:
        return ("training.activation_checkpointing null: decided at launch from the GPU's memory and "
                "per_device_gib.activation_checkpointing_off (both figures are given)")
    return f"activation checkpointing {'on' if recipe_value else 'off'} as the recipe sets; both figures are given"


def need_for(inputs: dict, changes: dict) -> dict:
    """Pure: per_device_gib (checkpointing on / off) for the plan's estimate inputs with some settings changed,
    e.g. the ones decisions.decide settles at launch (dtype, optimizer, Liger, padding-free rows, attention)."""
    if changes.get("weights_dtype") == "auto":  # decided `auto` (no bf16 here): what the plan resolved it to
        changes = {**changes, "weights_dtype": inputs.get("auto_dtype", inputs["settings"]["weights_dtype"])}
    settings = replace(settings_from_dict(inputs["settings"]), **changes)
    return {f"activation_checkpointing_{name}": need_gib(memory.peak(inputs["config"],
                                                                    replace(settings, activation_checkpointing=flag)))
            for name, flag in (("on", True), ("off", False))}


def settings_to_dict(s: Settings) -> dict:
    return {**{f.name: getattr(s, f.name) for f in fields(s)}, "topology": s.topology.to_dict()}


def settings_from_dict(d: dict) -> Settings:
    return Settings(**{**d, "topology": Topology(**d["topology"])})


def need_gib(result: dict) -> float:
    return round(result["peak_bytes"] * (1 + memory.ALLOCATOR_SLACK) / GIB + memory.CONTEXT_GIB, 2)


def settings_from_recipe(doc: dict, config: dict, kind: str, reference: str | None,
                         topology: Topology) -> tuple[Settings | None, list[str]]:
    from runner.plan.decisions import assumed_on_a_gpu

    model, training = doc["model"], doc["training"]
    assumptions = []
    # the recipe's null settings as the launch-time rules decide them on a GPU with bf16 (runner/plan/decisions.py)
    assumed = assumed_on_a_gpu(doc, topology.engine)
    precision = "bf16" if assumed["bf16"] else "fp16" if training.get("fp16") else "no"
    if "bf16" in assumed["reasons"] and assumed["bf16"]:
        assumptions.append("bf16 mixed precision (training.bf16 null: on for a GPU with bf16)")
    dtype = assumed["dtype"]
    if "dtype" in assumed["reasons"]:
        assumptions.append(f"model.dtype null: weights load as {dtype} (the launch-time fast default on a GPU)")
    if dtype == "auto":
        dtype = auto_dtype(model, config)
        assumptions.append(f"weights load as {dtype} (model.dtype auto)")
    optim = assumed["optim"]
    if "optim" in assumed["reasons"]:
        assumptions.append(f"training.optim null: {optim} (the launch-time fast default on a GPU)")
    length, online = training.get("max_length"), {}
    if kind == "online_rl":
        online = online_rl_inputs(doc, topology, assumptions)
        length = online.pop("length")
    if length is None:
        length = config.get("max_position_embeddings")
        if not isinstance(length, int):
            return None, ["max_length is null and the config has no max_position_embeddings"]
        assumptions.append(f"max_length null: examples assumed as long as the model allows ({length} tokens)")
    rows = "chosen + rejected rows of " if memory.KINDS[kind].rows == 2 else "rows of "
    assumptions.append(f"the longest micro-batch: {training['per_device_train_batch_size']} {rows}{length} tokens "
                       f"({'packing fills every row' if training.get('packing') else 'padding reaches this on the longest batch'})")
    if doc["peft"]["method"] == "partial":
        assumptions.append("peft partial: every weight counted as trainable (an upper bound)")
    liger, padding_free, attention = kernels(doc, assumptions)
    settings = Settings(
        weights_dtype=dtype, quantization=model["quantization"], peft=doc["peft"],
        optim=optim, mixed_precision=precision, batch=training["per_device_train_batch_size"],
        length=length, activation_checkpointing=bool(training.get("activation_checkpointing")), kind=kind,
        reference=reference, attention=attention, liger=liger, padding_free=padding_free, topology=topology, **online)
    return settings, assumptions


PROMPT_TOKENS = 512  # GRPO/RLOO prompts are not cut (TRL 1.16 has no max_prompt_length): the length assumed for them


def online_rl_inputs(doc: dict, topology: Topology, assumptions: list[str]) -> dict:
    """GRPO / RLOO: rows of prompt + completion, the generation batch per device, the reward models' weights."""
    training = doc["training"]
    batch = rewards.generation_batch(doc, topology.world_size)
    rows = batch["completions_per_generation"] // topology.world_size
    assumptions.append(f"prompts assumed up to {PROMPT_TOKENS} tokens (TRL does not cut them; `check-data` measures "
                       f"them) + max_completion_length {training['max_completion_length']}; {rows} sequences "
                       "generated at once per device (the generation batch), their KV cache counted")
    reward_bytes = 0
    for reward in doc.get("rewards") or []:
        if reward["type"] != "model":
            continue
        weights = model_bytes(reward["path"])
        if weights is None:
            assumptions.append(f"reward model {reward['path']}: its size is unknown here (no readable config.json "
                               "of a known architecture), not counted")
        reward_bytes += weights or 0
    return {"length": PROMPT_TOKENS + training["max_completion_length"], "generation_rows": rows,
            "reward_model_bytes": reward_bytes}


def model_bytes(location: str) -> int | None:
    """A local model directory's weights as they load (its config's dtype, else fp32), from its config.json; a LoRA
    reward run's from its base's (the adapter itself is small, and merged into the base when it loads)."""
    path = Path(location) / "config.json"
    adapter = Path(location) / "adapter_config.json"
    if not path.is_file() and adapter.is_file():
        try:
            path = Path(json.loads(adapter.read_text())["base_model_name_or_path"]) / "config.json"
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
            return None
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    total = estimate.total_parameters(config) if isinstance(config, dict) else None
    if total is None:
        return None
    return total * memory.DTYPE_BYTES.get(config.get("dtype") or config.get("torch_dtype"), 4)


def auto_dtype(model: dict, config: dict) -> str:
    """What `dtype: auto` loads: the checkpoint's own dtype; fp32 for a random init or an unknown one."""
    own = config.get("torch_dtype") or config.get("dtype")
    return "float32" if model["init"] == "random" or own not in memory.DTYPE_BYTES else own


def kernels(doc: dict, assumptions: list[str]) -> tuple[bool, bool, str]:
    """(Liger kernels, padding-free rows, attention) as the recipe sets them; null ones counted as off (the larger
    estimate) until the launch decides them."""
    training = doc["training"]
    liger = training.get("use_liger_kernel")
    if liger is None:
        assumptions.append("training.use_liger_kernel null: counted without Liger's kernels (decided at launch)")
    packing = training.get("packing")
    if packing is None and "packing" in training:
        assumptions.append("training.packing null: counted as padded rows (decided at launch)")
    padding_free = bool(packing) and training.get("packing_strategy", "bfd") in ("bfd", "bfd_split")
    attention = doc["model"].get("attn_implementation") or "sdpa"
    if doc["model"].get("attn_implementation") is None:
        assumptions.append("model.attn_implementation null: counted as sdpa (the runner's varlen attention is "
                           "decided at launch for padding-free rows)")
    return bool(liger), padding_free, attention


def fit_lines(config: dict, settings: Settings) -> list[str]:
    """For each common GPU size: fits, or the changes that would make it fit (each alone, else together)."""
    needed = need_gib(memory.peak(config, settings))
    variants = [(name, need_gib(memory.peak(config, changed))) for name, changed in changes(settings)]
    lines = []
    for size in memory.GPU_SIZES_GIB:
        if needed <= size:
            lines.append(f"fits on {size} GiB GPUs: needs about {needed} GiB per device")
            continue
        alone = [f"{name} (~{gib} GiB)" for name, gib in variants if gib <= size]
        if not alone:
            together = cumulative(config, settings, size)
            alone = [together] if together else ["no single change or combination tried fits"]
        lines.append(f"does not fit on {size} GiB GPUs (needs about {needed} GiB); would fit with: " + "; ".join(alone))
    return lines


def changes(s: Settings) -> list[tuple[str, Settings]]:
    """Single changes that lower memory, each applicable to these settings."""
    found = []
    if not s.activation_checkpointing:
        found.append(("training.activation_checkpointing: true", replace(s, activation_checkpointing=True)))
    batch = s.batch // 2
    while batch >= 1:
        found.append((f"per_device_train_batch_size: {batch} with gradient_accumulation_steps x{s.batch // batch} "
                      "(same global batch)", replace(s, batch=batch)))
        batch //= 2
    if not s.liger and memory.KINDS[s.kind].liger:  # the tasks whose loss Liger fuses (sft, pretrain)
        found.append(("training.use_liger_kernel: true (liger-kernel installed, a GPU)", replace(s, liger=True)))
    if method_of(s.peft).trains_base and s.optim in ("adamw_torch", "adamw_torch_fused"):
        found.append(("training.optim: adamw_bnb_8bit", replace(s, optim="adamw_bnb_8bit")))
    if method_of(s.peft).trains_base:
        found.append((f"peft.method: lora (r {LORA['r']}, {LORA['target_modules']})", replace(s, peft=LORA)))
    # not suggested for a score head (classification, reward), as the estimate has done since it began
    if s.quantization.get("method", "none") == "none" and memory.KINDS[s.kind].lm_head:
        peft = s.peft if s.peft.get("method") == "lora" else LORA
        found.append(("QLoRA: model.quantization.method: bnb_4bit with peft.method: lora",
                      replace(s, quantization=QLORA, peft=peft)))
    gpus = max(s.topology.world_size, ZERO3_GPUS)
    if s.topology.engine != "deepspeed" or (s.topology.zero_stage or 0) < 3:
        found.append((f"DeepSpeed ZeRO-3 across {gpus} GPUs",
                      replace(s, topology=replace(s.topology, world_size=gpus, engine="deepspeed", zero_stage=3))))
    if not (s.topology.offload_optimizer and s.topology.offload_params):
        found.append(("DeepSpeed ZeRO-3 with the optimizer and parameters offloaded to the CPU",
                      replace(s, topology=replace(s.topology, engine="deepspeed", zero_stage=3,
                                                  offload_optimizer=True, offload_params=True))))
    return found


def cumulative(config: dict, s: Settings, size: float) -> str | None:
    """The shortest prefix of (checkpointing, batch 1, LoRA, QLoRA, ZeRO-3 offload) that fits, as one suggestion."""
    steps = [
        ("training.activation_checkpointing: true", lambda x: replace(x, activation_checkpointing=True)),
        ("per_device_train_batch_size: 1", lambda x: replace(x, batch=1)),
        ("peft.method: lora", lambda x: replace(x, peft=x.peft if x.peft.get("method") == "lora" else LORA)),
        ("model.quantization.method: bnb_4bit", lambda x: replace(x, quantization=QLORA)),
        ("DeepSpeed ZeRO-3 with CPU offload", lambda x: replace(x, topology=replace(
            x.topology, engine="deepspeed", zero_stage=3, offload_optimizer=True, offload_params=True))),
    ]
    taken = []
    for name, apply in steps:
        s = apply(s)
        taken.append(name)
        gib = need_gib(memory.peak(config, s))
        if gib <= size:
            return " + ".join(taken) + f" together (~{gib} GiB)"
    return None
