"""The settings decided per machine: one rule each, pure, the only place such a setting is decided.

A recipe leaves these null (or, for `use_cpu`, has no key): `plan` lists each with its rule
(plan["fast_defaults"]); at launch runner.launch.decide probes the machine and calls `decide` with what it found,
and writes the values into the plan's model spec and trainer config, each with its reason, before anything
loads. A value set in the recipe is never changed. The memory estimate reads the same rules (`assumed_on_a_gpu`)
instead of restating them; the rank-agreement and resume checks compare the values decided here.

On a CPU every rule but precision falls back to the plain setting (weights as the recipe says, padded
batches, no checkpointing, unfused AdamW, no workers); bf16 autocast is on where the CPU computes bf16
natively (runner/launch/cpu.py), as TRL's own default trains on any CPU.

Why these (measured on an H100 with plain TRL, bench/RESULTS.md): TRL loads weights in fp32 and autocasts
(bf16 weights: +21% tokens/s); padded batches of a new shape every step leave the GPU waiting
(padding to a multiple: +24%); packing without a variable-length kernel is slower than padding
(dense attention over one ~16k-token row), with one it removes the padding and keeps documents apart.
"""
from __future__ import annotations

from runner.plan import memory_fit
from runner.plan.methods import METHODS
from runner.plan.tasks import TASKS



# Architectures whose attention modules take the runner's varlen attention unchanged (no soft-capping,
# no sliding window when the config leaves it off) and that Liger kernels patch.
VARLEN_MODEL_TYPES = frozenset({"llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe"})


LIGER_MODEL_TYPES = frozenset({"llama", "mistral", "mixtral", "qwen2", "qwen3", "qwen3_moe", "gemma", "phi3"})




HEADROOM = 0.9  # share of the GPU's memory a run may plan to use (allocator fragmentation, CUDA context)


ALWAYS_DECIDED = frozenset({"/training/use_cpu"})  # settings no recipe sets
RULES = {
    # not a recipe key: always decided here (transformers' TrainingArguments.use_cpu)
    "/training/use_cpu": "on when no GPU is visible (the run then trains on the CPU), else off",
    "/training/bf16": "on when fp16 is off and the device that trains computes bf16 natively: a GPU that supports "
                      "it, or a CPU with avx512_bf16 / amx_bf16 (x86) or bf16 (Arm) in /proc/cpuinfo (elsewhere "
                      "torch.cpu.get_capabilities()), there as autocast, not under DeepSpeed; else off (emulated "
                      "bf16 is slower than fp32)",
    "/model/dtype": "bfloat16 when training runs in bf16 on a GPU (weights in the training dtype: no fp32 copy "
                    "autocast to bf16 every step), else `auto` (on a CPU bf16 autocasts over the weights as loaded)",
    "/model/attn_implementation": "the runner's varlen attention (torch.nn.attention.varlen) when batches are "
                                  "padding-free, else transformers' choice",
    "/training/packing": "on (bfd, padding-free, documents kept apart by the varlen attention) when a CUDA GPU with "
                         "PyTorch's varlen flash kernel is visible and the model is one it supports; else off",
    "/training/pad_to_multiple_of": "on a GPU without padding-free packing: max_length/8 rounded down to a power of "
                                    "two, 8..256 (few distinct shapes, at most ~1/8 padding); else none",
    "/training/activation_checkpointing": "on a GPU: off when the memory estimate without it (recomputed for the "
                                          "settings decided at launch) fits in 90% of the GPU's memory, on when it "
                                          "does not or no estimate exists; off on CPU",
    "/training/use_liger_kernel": "on when liger-kernel is installed, a GPU is visible, the task is sft/pretrain "
                                  "and the architecture is one Liger patches",
    "/training/optim": "adamw_torch_fused on a GPU, adamw_torch on CPU",
    "/training/dataloader_num_workers": "on a GPU: up to 4 workers (CPUs per GPU - 2), so batches are "
                                        "collated off the training loop; 0 on CPU",
}


def plan_section(doc: dict, task_name: str, model_config: dict | None) -> dict:
    """What `plan` shows: per setting the recipe's value (null: decided at launch) and the rule; facts the rules use."""
    settings = {}
    for path, rule in RULES.items():
        section, key = path.split("/")[1:]
        if path in ALWAYS_DECIDED:
            settings[path] = {"recipe": None, "rule": rule}
        elif key in doc[section]:
            value = doc[section][key]
            settings[path] = {"recipe": value, "rule": rule if value is None else "set in the recipe"}
    config = model_config or {}
    return {
        "settings": settings,
        "facts": {
            "task": task_name,
            "model_type": config.get("model_type"),
            "sliding_window": bool(config.get("sliding_window")) and config.get("use_sliding_window", True),
            "peft_method": doc["peft"]["method"],
            "max_length": doc["training"].get("max_length"),
            "packing_strategy": doc["training"].get("packing_strategy"),
        },
    }


def decide(plan: dict, machine: dict) -> dict:
    """Pure: recipe path -> {"value", "reason"} for every setting the recipe left null."""
    section = plan["fast_defaults"]
    facts = section["facts"]
    open_ = {p for p, s in section["settings"].items() if s["recipe"] is None} | ALWAYS_DECIDED
    config = plan["trainer"]["config"]
    gpu = machine["gpus"] > 0
    out = {}

    def set_(path, value, reason):
        if path in open_:
            out[path] = {"value": value, "reason": reason}

    set_("/training/use_cpu", not gpu, "no GPU visible: the CPU trains" if not gpu else "a GPU trains")
    set_("/training/bf16", *precision(config, machine, (plan.get("topology") or {}).get("engine", "single")))
    bf16 = config["bf16"] if config.get("bf16") is not None else out.get("/training/bf16", {}).get("value", False)
    quantization = plan["model"]["quantization"]  # None, or BitsAndBytesConfig's kwargs
    four_bit = quantization is not None and quantization["method"] == "bnb_4bit"
    set_("/model/dtype", *model_dtype(quantization["kwargs"]["bnb_4bit_compute_dtype"] if four_bit else None, bf16, gpu))
    packing, why = padding_free_ok(facts, machine, plan["model"]["attn_implementation"])
    set_("/training/packing", packing, why)
    padding_free = config.get("packing") if config.get("packing") is not None else out.get(
        "/training/packing", {}).get("value", False)
    padding_free = bool(padding_free) and facts["packing_strategy"] in ("bfd", "bfd_split")
    if padding_free and plan["model"]["attn_implementation"] is None and machine["varlen"]:
        out["/model/attn_implementation"] = {"value": "runner_varlen",
                                             "reason": "padding-free batches: each document attends only to itself"}
    set_("/training/pad_to_multiple_of", *pad_multiple(facts["max_length"], gpu, padding_free))
    liger = gpu and machine["liger"] and liger_applies(facts["task"], facts["model_type"])
    set_("/training/use_liger_kernel", liger,
         "liger-kernel installed, GPU, supported architecture" if liger else
         "needs liger-kernel installed, a GPU, a task whose loss Liger fuses (sft, pretrain) and a supported "
         "architecture")
    set_("/training/optim", *optimizer(gpu))
    memory = memory_as_decided(plan, out, bf16, padding_free)
    set_("/training/activation_checkpointing", *checkpointing(memory, machine, facts["peft_method"]))
    workers = min(4, max(0, machine["cpus"] // max(1, machine["gpus"]) - 2)) if gpu else 0
    set_("/training/dataloader_num_workers", workers,
         f"{machine['cpus']} CPUs for {machine['gpus']} GPU(s)" if gpu else "CPU: batches collated in the main process")
    return out


def precision(config: dict, machine: dict, engine: str) -> tuple[bool, str]:
    """bf16 mixed precision where the training device computes bf16 natively, and why (not)."""
    if config.get("fp16"):
        return False, "fp16 is on in the recipe"
    if machine["gpus"]:
        return (True, "the GPU supports bf16") if machine["bf16"] else (False, "the GPU has no bf16: fp32")
    cpu = machine.get("cpu_bf16") or {"native": False, "feature": None, "source": "not probed"}
    if cpu["native"] and engine == "deepspeed":
        # Seen with 2 CPU processes: ZeRO-3 cast QLoRA's fp32-stored packed 4-bit weights to bf16 and the run
        # failed ("shape '[128, 128]' is invalid for input of size 8192"); the speed-up was measured for autocast.
        return False, ("CPU under DeepSpeed: its bf16 trains bf16 weights (not autocast), which was not measured on "
                       "a CPU and breaks fp32-stored 4-bit weights: fp32")
    if cpu["native"]:
        return True, (f"CPU computes bf16 natively ({cpu['feature']} in {cpu['source']}): bf16 autocast, "
                      "faster than fp32 there (bench/RESULTS.md) and what TRL's own defaults train in")
    return False, f"no native bf16 on this CPU (no avx512_bf16, amx_bf16 or bf16 in {cpu['source']}): fp32"


def model_dtype(compute_dtype: str | None, bf16: bool, gpu: bool) -> tuple[str, str]:
    """A 4-bit base's unquantized parts in its compute dtype; otherwise the weights in the training dtype on a GPU."""
    if compute_dtype is not None:
        return compute_dtype, f"4-bit base: its bnb_4bit_compute_dtype ({compute_dtype})"
    return weights_dtype(bf16, gpu)


def optimizer(gpu: bool) -> tuple[str, str]:
    if gpu:
        return "adamw_torch_fused", "fused AdamW: one kernel for all parameters on the GPU"
    return "adamw_torch", "CPU"


def liger_applies(task_name: str, model_type: str | None) -> bool:
    """Liger's kernels fuse this task's loss (its task row) and patch this architecture."""
    return TASKS[task_name].liger_kernel and model_type in LIGER_MODEL_TYPES


# The machine `plan` assumes for what the launch decides, in the memory estimate: a GPU with bf16, without the
# varlen kernel and Liger (the larger estimate); the launch recomputes the estimate for the machine it lands on.
ASSUMED_GPU = {"gpus": 1, "bf16": True, "varlen": False, "liger": False}


def assumed_on_a_gpu(doc: dict, engine: str) -> dict:
    """What the rules decide on ASSUMED_GPU for the recipe's null precision, weights dtype and optimizer (the values
    the recipe sets are kept): the memory estimate's inputs, with the rule's reason for each one decided."""
    training, model = doc["training"], doc["model"]
    decided = {}
    bf16 = training.get("bf16")
    if bf16 is None:
        bf16, decided["bf16"] = precision(training, ASSUMED_GPU, engine)
    quant = model["quantization"]
    dtype = model["dtype"]
    if dtype is None:
        compute = quant.get("bnb_4bit_compute_dtype") if quant["method"] == "bnb_4bit" else None
        dtype, decided["dtype"] = model_dtype(compute, bf16, gpu=True)
    optim = training["optim"]
    if optim is None:
        optim, decided["optim"] = optimizer(gpu=True)
    return {"bf16": bf16, "dtype": dtype, "optim": optim, "reasons": decided}


def weights_dtype(bf16: bool, gpu: bool) -> tuple[str, str]:
    if bf16 and gpu:
        return "bfloat16", "training runs in bf16 on a GPU"
    if bf16:  # measured this way only (fp32 weights, autocast); it is also TRL's CPU default
        return "auto", "CPU: bf16 autocasts over the weights as loaded (the recipe's `auto`)"
    return "auto", "training does not run in bf16: the recipe's `auto`"


def packing_may_be_decided(doc: dict, task_name: str, model_config: dict | None) -> bool:
    """Pure, for the plan: packing is left null and a machine with the varlen kernel would switch it on."""
    if "packing" not in doc["training"] or doc["training"]["packing"] is not None:
        return False
    facts = plan_section(doc, task_name, model_config)["facts"]
    return padding_free_ok(facts, {"varlen": True}, doc["model"].get("attn_implementation"))[0]


def padding_free_ok(facts: dict, machine: dict, attn: str | None) -> tuple[bool, str]:
    """Whether packing without padding keeps documents apart and fast on this machine, and why (not)."""
    if not machine["varlen"]:
        return False, "no varlen attention kernel here (needs a CUDA GPU, sm80+, torch with nn.attention.varlen)"
    if facts["packing_strategy"] not in ("bfd", "bfd_split"):
        return False, f"packing_strategy {facts['packing_strategy']!r} cuts documents and lets them attend to each other"
    if attn is not None and attn != "runner_varlen" and not attn.startswith("flash_attention"):
        return False, f"model.attn_implementation is {attn!r}: a packed row would need a dense block mask (slow)"
    if facts["model_type"] not in VARLEN_MODEL_TYPES or facts["sliding_window"]:
        return False, f"architecture {facts['model_type']!r} (or its sliding window) is not one the varlen path takes"
    if not METHODS[facts["peft_method"]].packable:
        return False, f"peft method {facts['peft_method']!r} adds virtual tokens to every row"
    if facts["max_length"] is None:
        return False, "max_length is null (packing needs the row length)"
    return True, "varlen flash attention available: rows without padding, documents kept apart"


def pad_multiple(max_length: int | None, gpu: bool, padding_free: bool) -> tuple[int | None, str]:
    if not gpu:
        return None, "CPU: batches padded to their longest example"
    if padding_free:
        return None, "padding-free packing: nothing to pad"
    multiple = 64 if max_length is None else max(8, min(256, 1 << max(0, (max_length // 8).bit_length() - 1)))
    return multiple, f"GPU: bucketed shapes (max_length {max_length} / 8, power of two, 8..256)"


def memory_as_decided(plan: dict, decided: dict, bf16: bool, padding_free: bool) -> dict | None:
    """The plan's memory section with per_device_gib recomputed for the settings decided here (weights dtype,
    optimizer, precision, Liger, padding-free rows, attention), which the plan could only assume. Pure."""
    memory = plan.get("memory")
    if not memory or "estimate_inputs" not in memory:
        return memory  # no estimate, or a plan.json written before launch-time recomputation existed
    config = plan["trainer"]["config"]

    def value(path, current):
        return decided[path]["value"] if path in decided else current

    dtype = value("/model/dtype", plan["model"]["dtype"])
    precision = "bf16" if bf16 else "fp16" if config.get("fp16") else "no"
    changes = {"mixed_precision": precision, "padding_free": padding_free,
               "liger": bool(value("/training/use_liger_kernel", config.get("use_liger_kernel"))),
               "attention": value("/model/attn_implementation", plan["model"]["attn_implementation"]) or "sdpa"}
    inputs = memory["estimate_inputs"]
    if dtype == "auto":  # what the plan resolved `auto` to from the config (fp32 for a random init)
        dtype = inputs.get("auto_dtype", inputs["settings"]["weights_dtype"])
    if dtype in ("float32", "bfloat16", "float16"):
        changes["weights_dtype"] = dtype
    optim = value("/training/optim", config.get("optim"))
    if optim:
        changes["optim"] = optim
    need = memory_fit.need_for(inputs, changes)
    shown = ", ".join(f"{k} {v}" for k, v in changes.items())
    return {**memory, "per_device_gib": need, "decided_for": shown}


def checkpointing(memory: dict | None, machine: dict, peft_method: str = "none") -> tuple[bool, str]:
    if not machine["gpus"]:
        return False, "CPU: no GPU memory to save"
    if not METHODS[peft_method].checkpointable:
        return False, (f"{METHODS[peft_method].name}: its prefixes travel as a key/value cache, which checkpointing "
                       "switches off")
    needed = ((memory or {}).get("per_device_gib") or {}).get("activation_checkpointing_off")
    if needed is None:
        return True, "no memory estimate in the plan: kept on to be safe"
    budget = HEADROOM * machine["gpu_memory_gib"]
    basis = f" (estimate for {memory['decided_for']})" if memory.get("decided_for") else ""
    if needed <= budget:
        return False, (f"estimated {needed:.1f} GiB without it fits in {budget:.1f} GiB ({HEADROOM:.0%} of the GPU)"
                       + basis)
    return True, f"estimated {needed:.1f} GiB without it exceeds {budget:.1f} GiB ({HEADROOM:.0%} of the GPU)" + basis


def decided_values(plan: dict) -> dict:
    return {path: s["value"] for path, s in plan.get("fast_defaults", {}).get("settings", {}).items() if "value" in s}
