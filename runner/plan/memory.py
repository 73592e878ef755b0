"""Peak GPU memory per device for a recipe, from the model's config.json, without torch.

The arithmetic, per device (bytes), for decoder models whose shapes runner.plan.estimate knows:

    weights     params x dtype bytes; bnb 4-bit linear layers 0.5 B + block scales, 8-bit 1 B
    gradients   trainable params x their dtype bytes
    optimizer   states per trainable param (AdamW: two in the param's dtype; 8-bit: 2 B; SGD: none)
    step temp   torch's foreach AdamW allocates one param-sized temporary in `step` (fused: none)
    autocast    bf16 copies of fp32 linear weights: trainable ones cached for the forward pass, frozen
                ones kept per linear for backward (without checkpointing)
    activations counted tensor by tensor (runner.plan.activations): HF or Liger layers, LoRA, sdpa (with
                its mask over padded or packed rows), eager or varlen/flash attention, TRL's fused LM
                head; with checkpointing only each layer's input is kept and one layer is rebuilt
    workspaces  transient: TRL's logits tile and gradient accumulators, one layer's backward gradients

The peak is the largest of five moments: end of the forward pass, the LM head's backward (all saved
activations + its workspace), the top layer's backward (+ the rebuilt layer under checkpointing),
end of the backward pass (all gradients + one layer), the optimizer step. ZeRO / FSDP divide what
they shard by the world size. bench/RESULTS.md compares it with measured peaks.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from runner.plan import activations as act
from runner.plan import estimate as counts
from runner.plan.methods import METHODS, method_of
from runner.plan.topology import Topology

GIB = 2**30
GPU_SIZES_GIB = (24, 40, 80)
CONTEXT_GIB = 0.75  # CUDA context and cuBLAS workspaces: outside torch's allocator, not in max_memory_allocated
ALLOCATOR_SLACK = 0.10  # memory the caching allocator reserves beyond what is allocated (fragmentation)
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# optimizer -> (state bytes per trainable param, or None: twice the param's own bytes; step temporary: param-sized)
OPTIMIZERS = {
    "adamw_torch": (None, True), "adamw_torch_fused": (None, False),
    "adamw_bnb_8bit": (2, False), "adamw_8bit": (2, False), "paged_adamw_8bit": (2, False),
    "paged_adamw_32bit": (8, False), "lion_8bit": (1, False), "paged_lion_8bit": (1, False),
    "rmsprop": ("one", True), "adagrad": ("one", True), "sgd": (0, False), "adafactor": (0, False),
}


KINDS = act.KINDS  # a task's memory_kind -> how its batches and head count (runner/plan/activations.py)


@dataclass(frozen=True)
class Settings:
    weights_dtype: str = "bfloat16"       # the dtype weights are loaded in (non-quantized parts, with bnb)
    quantization: dict = field(default_factory=lambda: {"method": "none"})
    peft: dict = field(default_factory=lambda: {"method": "none"})
    optim: str = "adamw_torch"
    mixed_precision: str = "bf16"         # "bf16" | "fp16" | "no"
    batch: int = 1                        # sequences per micro-batch per device
    length: int = 1024                    # tokens in the longest sequence
    activation_checkpointing: bool = False
    kind: str = "sft"                     # a key of KINDS
    reference: str | None = None          # "copy" (dpo) or "reloaded" (grpo/rloo, beta > 0): a second set of weights
    generation_rows: int = 0              # grpo/rloo: sequences generated at once per device (their KV cache)
    reward_model_bytes: int = 0           # grpo/rloo: the reward models' weights, resident beside the policy
    attention: str = "sdpa"               # "eager" materialises the attention scores; runner_varlen / flash: no mask
    liger: bool = False                   # Liger's RMSNorm, SwiGLU and RoPE kernels (use_liger_kernel)
    padding_free: bool = False            # packed rows without padding: one row of batch x length tokens
    topology: Topology = Topology()


def peak(config: dict, s: Settings) -> dict | None:
    """Peak allocated bytes (as torch.cuda.max_memory_allocated would report) and its parts; None: unknown model."""
    shapes = counts.linear_shapes(config)
    total = counts.total_parameters(config)
    if shapes is None or total is None:
        return None
    layers, h, vocab = config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]
    linear = layers * sum(i * o for i, o, _ in shapes.values())
    head = 0 if config.get("tie_word_embeddings", False) else vocab * h
    if not KINDS[s.kind].lm_head:  # a tiny score head instead of the LM head
        total -= head
        head = 0
    w_bytes = DTYPE_BYTES[s.weights_dtype]
    quant = s.quantization.get("method", "none")
    weights = weights_bytes(linear, total - linear, w_bytes, s.quantization)
    trainable, t_bytes = trainable_params(config, total, s, w_bytes, quant)
    per_param, temp_too = OPTIMIZERS.get(s.optim, (None, True))
    state_bytes = 2 * t_bytes if per_param is None else t_bytes if per_param == "one" else per_param
    full = method_of(s.peft).trains_base
    ckpt = s.activation_checkpointing
    # fp32 weights under bf16 autocast: trainable ones are cast once and cached for the whole forward pass;
    # frozen ones are cast per call, and each linear keeps its copy for backward unless checkpointing drops it
    casts = s.mixed_precision != "no" and w_bytes == 4 and quant == "none" and not sharded_bf16(s.topology)
    parts = {
        "weights": weights, "gradients": trainable * t_bytes, "optimizer_states": trainable * state_bytes,
        "optimizer_step_temporary": trainable * t_bytes if temp_too else 0,
        "autocast_weight_copies": 2 * linear if casts and (full or not ckpt) else 0,
        "reference_model": weights if s.reference in ("copy", "reloaded") else 0,  # a task with a reference
        "reward_models": s.reward_model_bytes,
        "ddp_gradient_buckets": 0,
    }
    if s.topology.engine != "single":
        fp32_states = 8 if per_param is None else 4 if per_param == "one" else per_param
        parts = shard(s.topology, parts, total, trainable, layers, quant, fp32_states, temp_too)
    parts.update(activation_parts(config, s, shapes))
    tokens = parts.pop("tokens")
    parts.pop("saved_per_layer")
    head_trains = full and KINDS[s.kind].lm_head
    ws_forward, ws_backward = act.head_workspace(config, s, tokens, head_trains, w_bytes)
    parts.update(lm_head_workspace_forward=ws_forward, lm_head_workspace_backward=ws_backward)
    copies_backward = 0 if ckpt else parts["autocast_weight_copies"]
    one_layer = parts["activations_one_layer"] + (2 * linear // layers if casts else 0)
    fixed = parts["weights"] + parts["reference_model"] + parts["reward_models"] + parts["optimizer_states"]
    grads = parts["gradients"] + parts["ddp_gradient_buckets"]
    saved = parts["activations_saved"] + parts["lm_head_saved"]
    moments = {
        "forward_end": fixed + parts["autocast_weight_copies"] + saved + ws_forward,
        "backward_start": fixed + copies_backward + saved + ws_backward,
        # the top layer's backward: every layer's saved tensors (+ the one rebuilt when checkpointing)
        "top_layer_backward": fixed + copies_backward + parts["activations_saved"]
        + (one_layer if ckpt else 0) + parts["layer_backward_workspace"] + (vocab * h * t_bytes if head_trains else 0),
        "backward_end": fixed + grads + one_layer + parts["layer_backward_workspace"],
        "optimizer_step": fixed + grads + parts["optimizer_step_temporary"],
    }
    if s.generation_rows:  # grpo/rloo: generating between optimizer steps (gradients already freed)
        parts.update(generation_parts(config, s, total))
        moments["generation"] = fixed + parts["generation_kv_cache"] + parts["generation_workspace"]
    when = max(moments, key=moments.get)
    return {"peak_bytes": moments[when], "peak_at": when, "moments": moments, "parts": parts, "trainable": trainable,
            "tokens_per_micro_batch": tokens}


def generation_parts(config: dict, s: Settings, total: int) -> dict:
    """The generation batch's KV cache (every layer's keys and values for each sequence's prompt + completion, in the
    compute dtype) and the sampling step's fp32 logits and probabilities for the last position of each sequence;
    under ZeRO-3 the whole model is gathered to generate (TRL's ds3_gather_for_generation), in the compute dtype."""
    kv_width = counts.linear_shapes(config)["k_proj"][1]
    cache = s.generation_rows * s.length * config["num_hidden_layers"] * 2 * kv_width * act.compute_bytes(s)
    zero3 = s.topology.engine == "deepspeed" and (s.topology.zero_stage or 0) >= 3
    gathered = total * act.compute_bytes(s) if zero3 else 0
    return {"generation_kv_cache": cache,
            "generation_workspace": s.generation_rows * config["vocab_size"] * 4 * 2 + gathered}


def sharded_bf16(t: Topology) -> bool:
    """DeepSpeed computes with bf16 copies of the parameters, FSDP gathers them in bf16: no autocast copies."""
    return t.engine == "deepspeed" or (t.engine == "fsdp" and t.world_size > 1)


def activation_parts(config: dict, s: Settings, shapes: dict | None = None) -> dict:
    """Saved-for-backward bytes of one micro-batch: all layers, one layer, the LM head; and the layer workspace."""
    shapes = shapes or counts.linear_shapes(config)
    tokens = s.batch * s.length * KINDS[s.kind].rows  # padding-free: batch x length real tokens
    full = method_of(s.peft).trains_base
    layer = act.layer_bytes(config, shapes, s, lora_targets(shapes, s.peft))
    kept = act.checkpointed_layer_bytes(config, s) if s.activation_checkpointing else layer
    return {"tokens": tokens, "activations_saved": config["num_hidden_layers"] * kept * tokens,
            "activations_one_layer": layer * tokens, "saved_per_layer": kept * tokens,
            "lm_head_saved": act.head_bytes(config, s, full) * tokens,
            "layer_backward_workspace": act.layer_backward_bytes(config, s) * tokens}


def weights_bytes(linear: int, other: int, w_bytes: int, quantization: dict) -> int:
    """Decoder linear layers quantized by bitsandbytes; embeddings, norms and the LM head stay in the load dtype,
    except under quantization, where the runner's k-bit preparation (peft's prepare_model_for_kbit_training)
    upcasts every parameter that is not quantized to fp32: for Llama-3.1-8B that is 2 GiB more than bf16, and
    the measured 7.35 GiB after loading on the H100 (bench/qlora_8b_h100.json) matches only with it."""
    method = quantization["method"]
    if method == "bnb_4bit":
        # 4 bits per weight + one absmax per 64 weights: fp32, or (double quantization) 8-bit plus an fp32
        # scale per 256 blocks. The storage dtype only changes how the packed bytes are typed, not their number.
        scales = (1 / 64 + 4 / (64 * 256)) if quantization["bnb_4bit_use_double_quant"] else 4 / 64
        return round(linear * (0.5 + scales)) + other * 4
    if method == "bnb_8bit":
        return linear + other * 4  # int8 weights (+ one fp32 scale per row, negligible)
    return (linear + other) * w_bytes


def trainable_params(config: dict, total: int, s: Settings, w_bytes: int, quant: str) -> tuple[int, int]:
    """(trainable parameters, bytes of each): adapters are fp32 (peft upcasts them), bf16 over a 4/8-bit base (TRL)."""
    method = s.peft.get("method", "none")
    if method == "lora":
        targets = s.peft["target_modules"]
        if isinstance(targets, list):  # a classification head ("score") adds r x (h + labels): negligible
            known = set(counts.linear_shapes(config)) | {"lm_head"}
            targets = [t for t in targets if t.split(".")[-1] in known]
        else:  # "all-linear", or a regular expression: every decoder linear layer, an upper bound
            targets = "all-linear"
        count = counts.lora_parameters(config, s.peft["r"], targets)
        return count, 2 if quant != "none" else 4
    if METHODS[method].trains_base:  # partial: an upper bound (the patterns are matched after loading)
        return total, w_bytes
    return 0, 4  # prompt / prefix tuning, IA3: a few thousand to a few million parameters


def lora_targets(shapes: dict, peft: dict) -> list[str]:
    if peft.get("method") != "lora":
        return []
    targets = peft["target_modules"]
    if not isinstance(targets, list):  # "all-linear", or a regular expression: every linear layer, an upper bound
        return list(shapes)
    return [t.split(".")[-1] for t in targets if t.split(".")[-1] in shapes]


def shard(t: Topology, parts: dict, total: int, trainable: int, layers: int, quant: str,
          fp32_states: int, temp_too: bool) -> dict:
    """What each device holds under DDP, DeepSpeed ZeRO or FSDP."""
    world, parts = max(t.world_size, 1), dict(parts)
    working = 2 * 2 * total // max(layers, 1)  # ZeRO-3 / FSDP: about two layers gathered in bf16 at a time
    if t.engine == "ddp" and world > 1:
        parts["ddp_gradient_buckets"] = parts["gradients"]  # the reduction buckets: a second copy of the gradients
    elif t.engine == "deepspeed":
        # DeepSpeed trains bf16 params and grads; fp32 master weights join the (fp32) optimizer states
        if quant == "none":
            parts["weights"] = total * 2
        parts.update(gradients=trainable * 2, optimizer_states=trainable * (4 + fp32_states),
                     optimizer_step_temporary=trainable * 4 if temp_too else 0, autocast_weight_copies=0)
        stage = t.zero_stage or 0
        if stage >= 1:
            parts["optimizer_states"] //= world
            parts["optimizer_step_temporary"] //= world
        if stage >= 2:
            parts["gradients"] //= world
        if stage >= 3:
            parts["weights"] = working if t.offload_params else parts["weights"] // world + working
        if t.offload_optimizer:
            parts.update(optimizer_states=0, optimizer_step_temporary=0)
    elif t.engine == "fsdp" and world > 1:
        for key in ("gradients", "optimizer_states", "optimizer_step_temporary"):
            parts[key] //= world
        parts["weights"] = parts["weights"] // world + working
        parts["autocast_weight_copies"] = 0  # FSDP's mixed precision gathers bf16 params instead
    return parts
