"""Bytes a decoder layer and the LM head keep for the backward pass, counted tensor by tensor (no torch).

Every figure is per token and follows what the code that runs saves (torch's autograd formulas,
transformers 5.x Llama / Mistral / Qwen2/3 modules, peft's LoRA layer, bitsandbytes' 4-bit matmul,
Liger 0.8.5's autograd Functions, TRL 1.16's fused LM head). `bench/saved_activations.py` measures the
same counts on a real transformers model with `saved_tensors_hooks`, and
`tests/tiny/test_estimate_vs_transformers.py::test_layer_count_matches_saved_tensors_of_a_real_model` holds them together.

Symbols: h hidden size, i MLP width, q = heads x head_dim, kv = kv heads x head_dim; r the residual
stream's bytes (4 when the weights are fp32, or a k-bit base whose embeddings peft upcasts; else 2);
c the compute dtype's bytes (2 under bf16/fp16 autocast; without it, the weights' own).

    HF RMSNorm         x.float() (4h) + rsqrt (4) + x_hat in the input dtype (r h, only if its weight trains)
    Liger RMSNorm      X (r h) + RSTD (4), whatever trains (LigerRMSNormFunction.save_for_backward(X, W, RSTD))
    linear inputs      a trainable linear keeps its input: one shared tensor when it is already
                       in the compute dtype, else autocast's own c-byte copy per linear (q, k, v: three)
    attention          q, k, v after RoPE, output, fp32 log-sum-exp per head (flash, memory-efficient, varlen
                       kernels); o_proj's input is the output itself. sdpa with a mask (padded rows, or packed
                       rows that transformers turns into a block mask) repeats k/v to all heads and converts the
                       boolean mask to a c-byte bias every layer. Eager: scores' fp32 softmax and c-byte
                       probabilities per head per key position instead of the log-sum-exp.
    RoPE               cos/sin only (shared by all layers); Liger's rope likewise
    MLP                HF: gate out, silu out, up out (3 c i) + product (c i, if down_proj trains);
                       Liger SiLUMul: gate out and up out (2 c i) + product (c i, if down_proj trains);
                       behind a bnb 4-bit base (fp32 norms), r instead of c: bnb returns its input's dtype
    bnb 4-bit linear   nothing (bitsandbytes 0.50's MatMul4Bit keeps only the packed weight)
    bnb 8-bit linear   its input A (MatMul8bitLt's ctx.tensors, outside save_for_backward; the int8 CAt only when the
                       weight trains): the norm outputs and down_proj's input, as a trained linear keeps them
    LoRA, per module   lora_A's c-byte copy of its input + 1-byte dropout mask (CUDA) + lora_A's output (c r)
    checkpointing      each layer keeps only its input (r h); one layer is rebuilt at a time in backward
    TRL fused LM head  the final norm + the selected hidden states (r h), targets (8), log_z and entropy (4 + 4)

The transient workspaces (not saved, alive for a moment) are the least certain part: see
LAYER_BACKWARD and head_workspace.
"""
from __future__ import annotations

from dataclasses import dataclass

from runner.plan.methods import method_of

# TRL 1.16's ChunkedLogProbFunction tiles: TOKEN_CHUNK_SIZE tokens x _CHUNKED_LOGPROB_CHUNK_SIZE vocab entries.
HEAD_TOKEN_TILE, HEAD_VOCAB_TILE = 4096, 32768


def residual_bytes(s) -> int:
    """Bytes per element of the residual stream (the embeddings' output dtype, kept by the adds)."""
    if s.topology.engine == "deepspeed":
        return 2  # DeepSpeed trains bf16 copies of the parameters
    if s.quantization.get("method", "none") != "none":
        return 4  # peft's k-bit preparation upcasts the embeddings (and norms) to fp32
    return 4 if s.weights_dtype == "float32" else 2


def compute_bytes(s) -> int:
    """Bytes per element of what the layers compute: 2 under bf16/fp16 autocast, else the weights' own dtype."""
    return 4 if s.mixed_precision == "no" and s.weights_dtype == "float32" else 2


def mlp_bytes(s) -> int:
    """bnb's 4-bit linear casts its output back to its input's dtype: behind fp32 norms the MLP runs in fp32."""
    return residual_bytes(s) if s.quantization.get("method", "none") != "none" else compute_bytes(s)


@dataclass(frozen=True)
class Kind:
    """How a task's batches and head count (a task row's memory_kind names one)."""

    rows: int  # sequences per example in a micro-batch: chosen and rejected are stacked for preference losses
    lm_head: bool  # a vocabulary-wide language-model head (TRL's fused head); else a small score head, counted as none
    liger: bool = False  # Liger's fused kernels apply to its loss (suggested when they alone would make it fit)


KINDS = {
    "sft": Kind(rows=1, lm_head=True, liger=True),
    "dpo": Kind(rows=2, lm_head=True),  # the reference model is Settings.reference
    "classification": Kind(rows=1, lm_head=False),
    "reward": Kind(rows=2, lm_head=False),  # chosen and rejected through a one-output score head, no reference
    # GRPO / RLOO: prompt + completion rows through the LM head; the generation batch's KV cache and the reward
    # models are counted by runner.plan.memory (Settings.generation_rows, Settings.reward_model_bytes)
    "online_rl": Kind(rows=1, lm_head=True),
}


def rows(s) -> int:
    """Sequences in a micro-batch: DPO and reward models stack each pair's chosen and rejected rows."""
    return s.batch * KINDS[s.kind].rows


def lm_head(s) -> bool:
    """A vocabulary-wide LM head follows the layers (else a score head, too small to count)."""
    return KINDS[s.kind].lm_head


def row_length(s) -> int:
    """Key positions an attention row spans: a padded row, or one padding-free row of the whole micro-batch."""
    return s.length * rows(s) if s.padding_free else s.length


def layer_bytes(config: dict, shapes: dict, s, lora_targets: list[str]) -> int:
    """What one decoder layer keeps for its backward pass, per token (no checkpointing)."""
    h, i = config["hidden_size"], config["intermediate_size"]
    q, kv = shapes["q_proj"][1], shapes["k_proj"][1]
    heads, kv_heads = config["num_attention_heads"], config.get("num_key_value_heads") or config["num_attention_heads"]
    r, c = residual_bytes(s), compute_bytes(s)
    full = method_of(s.peft).trains_base  # frozen linears keep nothing of their input
    m = mlp_bytes(s)

    total = 2 * norm_bytes(h, r, full, s.liger)
    if config.get("model_type") == "qwen3":  # per-head q/k norms: a reciprocal RMS per head, not per token
        total += norm_bytes(q, c, full, s.liger) + norm_bytes(kv, c, full, s.liger) + 4 * (heads + kv_heads - 2)
    eight_bit = s.quantization.get("method", "none") == "bnb_8bit"
    if full:  # the norms' outputs (dtype r) as inputs of q/k/v and gate/up: shared, or a c-byte copy per linear
        total += 2 * r * h if r == c else 5 * c * h
    elif eight_bit:  # bnb's 8-bit matmul keeps its (shared) input as it arrives: no autocast copy
        total += 2 * r * h
    if s.attention == "eager":
        total += 4 * c * q + (4 + c) * heads * row_length(s)
    else:
        kv_kept = q if masked(s) else kv  # transformers repeats k/v for sdpa whenever a mask is passed
        total += 2 * c * q + 2 * c * kv_kept + 4 * heads + (c * row_length(s) if masked(s) else 0)
    total += (2 if s.liger else 3) * m * i + (m * i if full or eight_bit else 0)  # + the product kept by down_proj
    dropout = bool(lora_targets) and (s.peft["lora_dropout"] or 0.0) > 0
    for name in lora_targets:
        total += shapes[name][0] * (c + (1 if dropout else 0)) + c * s.peft["r"]
    return total


def masked(s) -> bool:
    """sdpa gets a mask: padded rows (a batch of more than one), or a padding-free row of several documents."""
    return s.attention == "sdpa" and (s.padding_free or rows(s) > 1)


def norm_bytes(width: int, dtype_bytes: int, weight_trains: bool, liger: bool) -> int:
    if liger:
        return dtype_bytes * width + 4
    return 4 * width + 4 + (dtype_bytes * width if weight_trains else 0)


# Transient, per token, inside one layer's backward, net of what autograd frees on the way: the incoming and
# outgoing residual gradients (r h each); in the MLP the product's, SiLU output's and up output's gradients
# (3 c i) are alive at once while the product itself (c i) was freed with down_proj's node: net 2 c i
# (fp32 behind a 4-bit base: see mlp_bytes).
# Eager attention adds the gradients of its probabilities and fp32 softmax ((c + 4) per head and key).
# From the autograd graph; on the CPU (bench/saved_activations.py's allocator timeline on one layer) the net
# was about r h + 2 c i for sdpa, so this is an upper bound there.
def layer_backward_bytes(config: dict, s) -> int:
    c = compute_bytes(s)
    scores = (c + 4) * config["num_attention_heads"] * row_length(s) if s.attention == "eager" else 0
    return 2 * residual_bytes(s) * config["hidden_size"] + 2 * mlp_bytes(s) * config["intermediate_size"] + scores


def checkpointed_layer_bytes(config: dict, s) -> int:
    return residual_bytes(s) * config["hidden_size"]  # the layer's input, kept by the checkpoint


def head_bytes(config: dict, s, full: bool) -> int:
    """The final norm and what the LM head keeps, per token (a classification head: the final norm only)."""
    h, r = config["hidden_size"], residual_bytes(s)
    final_norm = norm_bytes(h, r, full, s.liger)
    if not lm_head(s):
        return final_norm
    return final_norm + r * h + 8 + 4 + 4  # TRL's fused head: hidden[mask], targets, log_z, entropy


def head_workspace(config: dict, s, tokens: int, head_trains: bool, w_bytes: int) -> tuple[int, int]:
    """(forward, backward) transient bytes of TRL's fused LM head: the logits tile; in backward also the fp32
    gradient accumulators for the hidden states and (when the head trains) the weight, and their casts back."""
    if not lm_head(s):
        return 0, 0
    h, vocab, c, r = config["hidden_size"], config["vocab_size"], compute_bytes(s), residual_bytes(s)
    tile = min(tokens, HEAD_TOKEN_TILE) * HEAD_VOCAB_TILE * c  # allocated at the full tile width, whatever the vocab
    weight_tile = min(vocab, HEAD_VOCAB_TILE) * h * c if w_bytes != c else 0
    backward = tile + weight_tile + tokens * h * (4 + (r if r != 4 else 0))
    if head_trains:
        backward += vocab * h * (4 + (w_bytes if w_bytes != 4 else 0))
    return tile + weight_tile, backward
