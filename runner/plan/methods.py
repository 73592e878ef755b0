"""The tuning method and the base's quantization: cross-field checks, specs and parameter counts for the plan.

Pure like plan.py (no torch, no peft). Each rule below that rejects a combination was seen to fail
(or to train nothing) with the installed libraries; tests/tiny/test_methods.py runs them.
"""
from __future__ import annotations

import re

from dataclasses import dataclass

from runner.plan import estimate
from runner.errors import Problem, did_you_mean
from runner.plan.tasks import Task


@dataclass(frozen=True)
class Method:
    """What a tuning method (`peft.method`) is, in the terms every stage asks about."""

    name: str  # how records and messages call it
    trains_base: bool  # base weights take gradients: they need optimizer state and cannot be quantized
    adapter: bool  # a peft adapter: only it is saved, and it loads onto its base (its config class: runner/train/adapters.py)
    soft_prompt: bool  # virtual tokens before every input (peft's prompt learning): no module replaced, nothing to merge
    packable: bool  # rows may be packed without padding (the token sequence is left as it is)
    mergeable: bool  # `merge` folds it into the base
    # trains under activation checkpointing (prefix tuning's prefixes travel as a key/value cache, which
    # transformers switches off under checkpointing: training then fails with a shape mismatch)
    checkpointable: bool = True


METHODS = {
    "none": Method("full fine-tuning", trains_base=True, adapter=False, soft_prompt=False, packable=True,
                   mergeable=False),
    "partial": Method("partial fine-tuning", trains_base=True, adapter=False, soft_prompt=False, packable=True,
                      mergeable=False),
    "lora": Method("LoRA", trains_base=False, adapter=True, soft_prompt=False, packable=True, mergeable=True),
    # not packed: not measured padding-free (peft's IA3 scales activations position-wise, which packing would not change)
    "ia3": Method("IA3", trains_base=False, adapter=True, soft_prompt=False, packable=False, mergeable=True),
    "prompt_tuning": Method("prompt tuning", trains_base=False, adapter=True, soft_prompt=True, packable=False,
                            mergeable=False),
    "prefix_tuning": Method("prefix tuning", trains_base=False, adapter=True, soft_prompt=True, packable=False,
                            mergeable=False, checkpointable=False),
}


def method_of(peft: dict | None) -> Method:
    """The method row of a recipe's peft section or a plan's peft spec (None: full fine-tuning)."""
    return METHODS[(peft or {}).get("method", "none")]


def quantized(doc: dict) -> bool:
    return doc["model"]["quantization"]["method"] != "none"


def check_methods(doc: dict, config: dict | None, task: Task) -> list[Problem]:
    peft, quant, training = doc["peft"], doc["model"]["quantization"], doc["training"]
    method = peft["method"]
    problems = check_peft(peft, config, task)
    if quant["method"] != "none" and METHODS[method].trains_base:
        problems.append(Problem("/model/quantization/method", f"{quant['method']} weights cannot be trained, and "
                                f"peft.method '{method}' ({METHODS[method].name}) trains base weights",
                                "set peft.method to lora (QLoRA with bnb_4bit) or another adapter, or set "
                                "model.quantization.method to none"))
    targets = peft.get("target_modules")
    if method == "lora" and not task.adapter_on_head_trains and isinstance(targets, list) and any(
            t.split(".")[-1] == "lm_head" for t in targets):
        problems.append(Problem("/peft/target_modules", "TRL's SFTTrainer computes the loss from lm_head.weight "
                                "directly, so an adapter on lm_head would never train (TRL rejects it)",
                                "remove lm_head from target_modules"))
    if quant["method"] != "none" and method == "lora" and peft["init_lora_weights"] in ("pissa", "olora"):
        problems.append(Problem("/peft/init_lora_weights", f"'{peft['init_lora_weights']}' rewrites the base "
                                "weights, which are quantized here", "use true or gaussian with a quantized base"))
    if METHODS[method].soft_prompt and (training.get("packing") or training.get("padding_free")):
        key = "packing" if training.get("packing") else "padding_free"
        problems.append(Problem(f"/training/{key}", f"{method} drops the position ids that keep packed (padding-free) "
                                "examples apart, so they would attend to each other and get wrong positions",
                                f"set training.{key} to false with {method}"))
    if not METHODS[method].checkpointable and training.get("activation_checkpointing"):
        problems.append(Problem("/training/activation_checkpointing", f"{METHODS[method].name} passes its prefixes "
                                "as a key/value cache, which transformers switches off under activation checkpointing "
                                "(training then fails with a shape mismatch)",
                                f"set training.activation_checkpointing to false with {method}"))
    return problems


def check_peft(peft: dict, config: dict | None, task: Task) -> list[Problem]:
    method = peft["method"]
    if method == "partial":
        return check_patterns(peft["trainable"], "/peft/trainable")
    if method == "prompt_tuning":
        return check_prompt_tuning(peft)
    if method == "prefix_tuning" and peft["encoder_hidden_size"] is not None and not peft["prefix_projection"]:
        return [Problem("/peft/encoder_hidden_size", "only used with prefix_projection: true",
                        "set prefix_projection to true, or remove encoder_hidden_size")]
    if method == "ia3":
        return check_ia3(peft, config, task)
    if method != "lora":
        return []
    return check_targets(peft["target_modules"], config, task, "/peft/target_modules")


def check_prompt_tuning(peft: dict) -> list[Problem]:
    if peft["prompt_tuning_init"] == "TEXT" and not peft["prompt_tuning_init_text"]:
        return [Problem("/peft/prompt_tuning_init_text", "prompt_tuning_init 'TEXT' needs the text to start from",
                        "set prompt_tuning_init_text, or prompt_tuning_init to 'RANDOM'")]
    if peft["prompt_tuning_init"] == "RANDOM" and peft["prompt_tuning_init_text"]:
        return [Problem("/peft/prompt_tuning_init_text", "only used with prompt_tuning_init 'TEXT'",
                        "set prompt_tuning_init to 'TEXT', or remove the text")]
    return []


def check_ia3(peft: dict, config: dict | None, task: Task) -> list[Problem]:
    targets, feedforward = peft["target_modules"], peft["feedforward_modules"]
    problems = check_targets(targets, config, task, "/peft/target_modules") if targets is not None else []
    if feedforward is not None and targets is None:
        problems.append(Problem("/peft/feedforward_modules", "needs target_modules (it must be a subset of them)",
                                "list target_modules too, or leave both null for peft's defaults"))
    elif isinstance(feedforward, list) and isinstance(targets, list):
        for i, name in enumerate(feedforward):
            if name not in targets:
                problems.append(Problem(f"/peft/feedforward_modules/{i}", f"'{name}' is not in target_modules",
                                        "feedforward_modules must be a subset of target_modules"))
    return problems


def check_targets(targets, config: dict | None, task: Task, where: str) -> list[Problem]:
    if targets == "all-linear":
        return []
    shapes = estimate.linear_shapes(config) if config else None
    if isinstance(targets, str):
        problems = check_patterns([targets], where, single=True)
        if problems or shapes is None:
            return problems
        names = [f"model.layers.{i}.{'self_attn' if n in estimate.ATTENTION else 'mlp'}.{n}"
                 for i in range(config["num_hidden_layers"]) for n in shapes] + [task.head_module]
        if not any(re.fullmatch(targets, name) for name in names):
            return [Problem(where, f"the regular expression {targets!r} matches no linear module's full name",
                            f"peft matches it against whole names like '{names[0]}'; to give module names, "
                            "use a list, e.g. [\"q_proj\", \"v_proj\"]")]
        return []
    if shapes is None:
        return []  # unknown architecture: peft checks the names when it wraps the model
    known = list(shapes) + [task.head_module]
    return [
        Problem(f"{where}/{i}", f"'{name}' is not a linear module of this {config['model_type']} model",
                did_you_mean(name, known) or f"its linear modules: {', '.join(known)}")
        for i, name in enumerate(targets) if name.split(".")[-1] not in known
    ]


def check_patterns(patterns: list[str], where: str, single: bool = False) -> list[Problem]:
    problems = []
    for i, pattern in enumerate(patterns):
        try:
            re.compile(pattern)
        except re.error as exc:
            problems.append(Problem(where if single else f"{where}/{i}",
                                    f"{pattern!r} is not a regular expression: {exc}",
                                    "escape literal dots as \\\\. in JSON"))
    return problems


def peft_spec(peft: dict, task: Task, model: dict) -> dict | None:
    """What wraps or freezes the model: a peft config class with its kwargs, or patterns for `partial`.

    The base's revision goes into the adapter config beside the base's name (peft records both), so
    the saved adapter reloads on exactly the weights it was trained on.
    """
    method = peft["method"]
    if not METHODS[method].adapter:
        return None if method == "none" else {"method": method, "trainable": peft["trainable"]}
    kwargs = {k: v for k, v in peft.items() if k != "method"}
    if method == "prompt_tuning" and peft["prompt_tuning_init"] == "TEXT":
        kwargs["tokenizer_name_or_path"] = model["tokenizer"] or model["name_or_path"]  # peft tokenizes the text
        if model["gguf_file"] and not model["tokenizer"]:  # the tokenizer is inside the GGUF file
            kwargs["tokenizer_kwargs"] = {"gguf_file": model["gguf_file"]}
    if method == "prompt_tuning" and not kwargs["prompt_tuning_init_text"]:
        kwargs.pop("prompt_tuning_init_text")
    if method in ("lora", "ia3"):
        kwargs = {k: v for k, v in kwargs.items() if v is not None}  # null: peft's own default
    kwargs["revision"] = model["revision"]
    return {"method": method, "kwargs": {"task_type": task.peft_task_type, **kwargs}}


def quantization_spec(quant: dict) -> dict | None:
    """transformers' BitsAndBytesConfig kwargs (dtypes by name; the loader turns them into torch dtypes)."""
    if quant["method"] == "none":
        return None
    kwargs = {k: v for k, v in quant.items() if k != "method" and v is not None}
    flag = "load_in_4bit" if quant["method"] == "bnb_4bit" else "load_in_8bit"
    return {"method": quant["method"], "kwargs": {flag: True, **kwargs}}


def parameter_counts(config: dict | None, source: str, peft: dict, task: Task) -> dict:
    if task.head_module != "lm_head":  # the estimator counts language-model heads only
        return {"known": False, "why": f"the estimator counts language-model heads only, not the {task.name} "
                                       f"task's {task.head_module} head; run.json records the counts after loading"}
    total = estimate.total_parameters(config) if config else None
    if total is None:
        why = source if config is None else f"architecture '{config.get('model_type')}' is not in the estimator"
        return {"known": False, "why": why + "; run.json records the counts after loading"}
    if peft["method"] == "partial":
        return {"known": False, "why": "partial tuning: run.json records the trainable count after loading",
                "total": total}
    if peft["method"] == "none":
        trainable = total
    else:
        trainable = estimate.adapter_parameters(config, peft)
        if trainable is None:
            return {"known": False, "why": f"no exact closed form for these {peft['method']} settings; run.json "
                                           "records the counts after loading", "base_total": total}
        total += trainable
    return {"known": True, "total": total, "trainable": trainable,
            "trainable_share": round(trainable / total, 6), "from": source}
