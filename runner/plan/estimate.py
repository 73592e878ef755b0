"""Parameter counts from a model's config.json, without torch.

Only decoder architectures whose shapes we can write down exactly are counted; for any other
the plan says the counts are unknown and run.json records the real ones after loading.
The test suite checks these formulas against models built by transformers.
"""
from __future__ import annotations

# model_type -> (attention q/k/v have a bias by default, extra per-layer q/k norms)
DECODERS = {
    "llama": (False, False),
    "mistral": (False, False),
    "qwen2": (True, False),
    "qwen3": (False, True),
}
# Keys whose config-class defaults we do not repeat: if config.json lacks one, the count is unknown.
NEEDED = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
NEEDED_BY_TYPE = {"mistral": ("num_key_value_heads",), "qwen2": ("num_key_value_heads",),
                  "qwen3": ("num_key_value_heads", "head_dim")}
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")


def linear_shapes(config: dict) -> dict[str, tuple[int, int, bool]] | None:
    """Per-layer linear modules: name -> (in_features, out_features, has_bias); None if unknown."""
    if not _countable(config):
        return None
    qkv_bias_default, _ = DECODERS[config["model_type"]]
    h, i = config["hidden_size"], config["intermediate_size"]
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or h // heads
    qkv_bias = config.get("attention_bias", qkv_bias_default)
    o_bias = config.get("attention_bias", False) if config["model_type"] != "qwen2" else False
    mlp_bias = config.get("mlp_bias", False)
    return {
        "q_proj": (h, heads * head_dim, qkv_bias),
        "k_proj": (h, kv_heads * head_dim, qkv_bias),
        "v_proj": (h, kv_heads * head_dim, qkv_bias),
        "o_proj": (heads * head_dim, h, o_bias),
        "gate_proj": (h, i, mlp_bias),
        "up_proj": (h, i, mlp_bias),
        "down_proj": (i, h, mlp_bias),
    }


def _countable(config: dict) -> bool:
    model_type = config.get("model_type")
    if model_type not in DECODERS:
        return False
    needed = NEEDED + NEEDED_BY_TYPE.get(model_type, ())
    if not all(isinstance(config.get(k), int) and config[k] > 0 for k in needed if k != "head_dim"):
        return False
    if "head_dim" in needed and not isinstance(config.get("head_dim"), int):
        return False
    return config["hidden_size"] % config["num_attention_heads"] == 0 or isinstance(config.get("head_dim"), int)


def total_parameters(config: dict) -> int | None:
    shapes = linear_shapes(config)
    if shapes is None:
        return None
    h, vocab, layers = config["hidden_size"], config["vocab_size"], config["num_hidden_layers"]
    per_layer = sum(i * o + (o if bias else 0) for i, o, bias in shapes.values())
    per_layer += 2 * h  # input and post-attention RMSNorm
    if DECODERS[config["model_type"]][1]:
        head_dim = config.get("head_dim") or h // config["num_attention_heads"]
        per_layer += 2 * head_dim  # q_norm and k_norm
    embeddings = vocab * h
    head = 0 if config.get("tie_word_embeddings", False) else vocab * h
    return layers * per_layer + embeddings + head + h  # + final norm


def lora_parameters(config: dict, r: int, target_modules) -> int | None:
    """Trainable LoRA weights: r x (in + out) for every targeted linear module.

    Names match like peft's: a module whose name ends with the target ("self_attn.q_proj" or
    "q_proj"); "lm_head" is the output layer, counted once.
    """
    shapes = linear_shapes(config)
    if shapes is None:
        return None
    names = ATTENTION + MLP if target_modules == "all-linear" else [t.split(".")[-1] for t in target_modules]
    count = 0
    for name in dict.fromkeys(names):
        if name == "lm_head":
            count += r * (config["hidden_size"] + config["vocab_size"])
        else:
            count += config["num_hidden_layers"] * r * (shapes[name][0] + shapes[name][1])
    return count


def kv_width(config: dict) -> int:
    """Width of one layer's keys (or values): what prefix tuning learns per layer and virtual token."""
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    return head_dim * (config.get("num_key_value_heads") or heads)


def adapter_parameters(config: dict, peft: dict) -> int | None:
    """Trainable parameters a peft method adds, where a closed form is exact; None where it is not.

    LoRA: r x (in + out) per targeted module, + out per module for DoRA's magnitude. Prompt tuning:
    one embedding per virtual token. Prefix tuning: a key and a value per layer and virtual token
    (or the MLP that makes them). IA3: one scale per output (input, for feed-forward modules).
    """
    shapes = linear_shapes(config)
    if shapes is None:
        return None
    method, h = peft["method"], config["hidden_size"]
    if method == "prompt_tuning":
        return peft["num_virtual_tokens"] * h
    if method == "prefix_tuning":
        n, width, layers = peft["num_virtual_tokens"], kv_width(config), config["num_hidden_layers"]
        if not peft["prefix_projection"]:
            return n * layers * 2 * width
        hidden = peft["encoder_hidden_size"] or width
        return n * width + (width * hidden + hidden) + (hidden * layers * 2 * width + layers * 2 * width)
    if method == "ia3":
        targets, feedforward = peft["target_modules"], peft["feedforward_modules"]
        if not isinstance(targets, list) or not isinstance(feedforward, list):
            return None  # peft's per-architecture default or a regex: counted after loading
        names = [t.split(".")[-1] for t in targets]
        if any(name not in shapes for name in names):
            return None
        ff = {f.split(".")[-1] for f in feedforward}
        return config["num_hidden_layers"] * sum(shapes[n][0] if n in ff else shapes[n][1] for n in dict.fromkeys(names))
    if method == "lora":
        if peft["modules_to_save"] or peft["bias"] != "none" or peft["init_lora_weights"] not in (True, False, "gaussian"):
            return None  # whole module copies, biases or a re-initialised base: counted after loading
        targets = peft["target_modules"]
        if isinstance(targets, str) and targets != "all-linear":
            return None  # a regular expression: which modules it matches is known after loading
        if targets != "all-linear" and any(t.split(".")[-1] not in (*shapes, "lm_head") for t in targets):
            return None
        count = lora_parameters(config, peft["r"], targets)
        if peft["use_dora"]:  # one magnitude per output feature of each adapted module
            names = ATTENTION + MLP if targets == "all-linear" else [t.split(".")[-1] for t in targets]
            count += sum(config["vocab_size"] if n == "lm_head" else config["num_hidden_layers"] * shapes[n][1]
                         for n in dict.fromkeys(names))
        return count
    return None
