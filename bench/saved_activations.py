"""Bytes saved for backward per decoder layer per token, measured on the CPU, beside runner.plan.memory's count.

    python bench/saved_activations.py            # a Markdown table (a few seconds)
    python bench/saved_activations.py --json     # the same figures as JSON

A real transformers Llama built from a config (random weights, nothing downloaded) runs one forward pass
under `torch.autograd.graph.saved_tensors_hooks`. Every tensor autograd keeps for the backward pass is
recorded once (deduplicated by its storage), attributed to the decoder layer running when it was first
saved (forward pre/post hooks), and summed. Tensors with a parameter's shape (the weights themselves,
autocast's bf16 copies of fp32 weights) are left out: runner.plan.memory counts them as weights / copies.
Layer 0 also holds what all layers share (RoPE's cos/sin), so the per-layer figure is the mean of layers
1..n-1. The LM head is TRL 1.16's fused chunked log-prob head (`trl.trainer.utils.add_fused_lm_head`,
what SFTTrainer installs), measured as the "head" region (final norm + head).

Where the CPU differs from a GPU: sdpa runs PyTorch's CPU flash kernel, which saves what the CUDA
flash / memory-efficient kernels save (q, k, v, output, fp32 log-sum-exp); Liger's Triton kernels and
the varlen kernel do not run here, so those are counted from their source in runner.plan.memory only.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SMALL = {"model_type": "llama", "hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 4,
         "num_attention_heads": 8, "num_key_value_heads": 2, "vocab_size": 1000, "tie_word_embeddings": False,
         "max_position_embeddings": 1024, "rms_norm_eps": 1e-5}
# lora_dropout 0: on the CPU dropout keeps a mask in the input's dtype, on CUDA a 1-byte one (runner.plan.memory's count)
LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "target_modules": "all-linear"}
# name -> (weights dtype, LoRA, attention, rows: "full" (the tokens as one row, no mask: what a padded batch of
# one, or flash / varlen attention, sees), "padded" (2 rows, an attention mask) or "packed" (2 documents in one
# padding-free row, positions restarting), checkpointing). All run under
# bf16 autocast, as TRL trains with bf16=True, whatever dtype the weights have.
CASES = {
    "bf16": ("bfloat16", False, "sdpa", "full", False),
    "fp32_weights": ("float32", False, "sdpa", "full", False),
    "bf16_padded": ("bfloat16", False, "sdpa", "padded", False),
    "bf16_packed_sdpa": ("bfloat16", False, "sdpa", "packed", False),
    "bf16_lora": ("bfloat16", True, "sdpa", "full", False),
    "fp32_lora": ("float32", True, "sdpa", "full", False),
    "bf16_eager": ("bfloat16", False, "eager", "full", False),
    "bf16_ckpt": ("bfloat16", False, "sdpa", "full", True),
    "fp32_weights_ckpt": ("float32", False, "sdpa", "full", True),
}


def build(case: str, config: dict, batch: int, length: int):
    """The model and the forward kwargs for one case (TRL's fused head installed, as SFTTrainer does)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    dtype_name, lora, attention, rows, ckpt = CASES[case]
    torch.manual_seed(0)
    model_config = AutoConfig.for_model(**config)
    model_config._attn_implementation = attention
    model = AutoModelForCausalLM.from_config(model_config, dtype=getattr(torch, dtype_name))
    model.train()
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))  # what SFTTrainer does
    if ckpt:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers 5.23's name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **LORA))
        if ckpt:
            model.enable_input_require_grads()
    ids = torch.randint(0, config["vocab_size"], (batch, length))
    mask = torch.ones_like(ids)
    if rows == "padded":  # the second row shorter: transformers builds an attention mask (and repeats k/v for sdpa)
        mask[1, length // 2:] = 0
    kwargs = {"input_ids": ids, "labels": ids.masked_fill(mask == 0, -100), "fused_lm_head": True}
    if rows == "padded":
        kwargs["attention_mask"] = mask
    if rows == "packed":  # TRL's padding-free collator: one row, positions restarting at each document
        kwargs = {"input_ids": ids.reshape(1, -1), "labels": ids.reshape(1, -1), "fused_lm_head": True,
                  "position_ids": torch.arange(length).repeat(batch).reshape(1, -1)}
    return model, kwargs


def measure(case: str, config: dict = SMALL, batch: int = 2, length: int = 512) -> dict:
    """One forward pass: saved bytes per token per layer (mean of layers 1..n-1), in the head, elsewhere."""
    import torch

    batch, length = rows_of(CASES[case][3], batch, length)
    model, kwargs = build(case, config, batch, length)
    # weights, their transposed views and autocast's copies of them: counted as weights, not activations
    param_shapes = {tuple(p.shape) for p in model.parameters()} | {tuple(p.shape)[::-1] for p in model.parameters()}
    layers = model.get_base_model().model.layers if CASES[case][1] else model.model.layers
    region, seen, saved = ["other"], set(), {}

    def enter(index):
        return lambda *_: region.__setitem__(0, f"layer{index}")

    for index, layer in enumerate(layers):
        layer.register_forward_pre_hook(enter(index))
        layer.register_forward_hook(lambda *_: region.__setitem__(0, "head"))

    def pack(tensor):
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key not in seen and tuple(tensor.shape) not in param_shapes:
            seen.add(key)
            saved[region[0]] = saved.get(region[0], 0) + storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**kwargs)
    tokens = batch * length
    per_layer = [saved.get(f"layer{i}", 0) for i in range(len(layers))]
    del out  # the graph (and every saved tensor) is dropped: only the forward pass is measured
    return {"case": case, "tokens": tokens, "layers": len(layers),
            "per_layer_per_token": sum(per_layer[1:]) / (len(layers) - 1) / tokens,
            "layer0_per_token": per_layer[0] / tokens,
            "head_per_token": saved.get("head", 0) / tokens,
            "other_per_token": saved.get("other", 0) / tokens}


def cpu_peak(case: str, config: dict = SMALL, batch: int = 2, length: int = 512) -> dict:
    """Forward + backward under the profiler's CPU allocator timeline: bytes allocated at the end of the forward
    pass and at the peak, above what existed before (the weights). The forward figure is comparable with a GPU;
    the backward peak is not quite: TRL's fused head falls back to torch ops on the CPU (fp32 copies of every
    logits tile), which its Triton kernel does in place on a GPU."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    batch, length = rows_of(CASES[case][3], batch, length)
    model, kwargs = build(case, config, batch, length)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(**kwargs)
        with torch.profiler.record_function("backward"):
            out.loss.backward()
        del out
    forward_end, peak = timeline(prof)
    return {"forward_end": forward_end, "peak": peak}


def timeline(prof) -> tuple[int, int]:
    """(bytes allocated when the "backward" range starts, highest bytes allocated) from the allocator events."""
    events = prof.profiler.kineto_results.events()
    backward = min(e.start_ns() for e in events if e.name() == "backward")
    now = peak = forward_end = 0
    for start, nbytes in sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]"):
        if start >= backward and not forward_end:
            forward_end = now
        now += nbytes
        peak = max(peak, now)
    return forward_end, peak


def layer_backward(attention: str = "sdpa", config: dict = SMALL, tokens: int = 2048) -> dict:
    """One bf16 decoder layer, forward + backward under the CPU allocator timeline: per token, what is allocated
    at the end of the forward pass (saved tensors + output + its incoming gradient) and how far the backward pass
    rises above that (its workspace, plus the layer's weight gradients)."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    from transformers import AutoConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    model_config = AutoConfig.for_model(**{**config, "num_hidden_layers": 1})
    model_config._attn_implementation = attention
    torch.manual_seed(0)
    layer = LlamaDecoderLayer(model_config, 0).to(torch.bfloat16)
    x = torch.randn(1, tokens, config["hidden_size"], dtype=torch.bfloat16, requires_grad=True)
    positions = torch.arange(tokens)[None]
    rope = LlamaRotaryEmbedding(model_config)(x, positions)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = layer(x, position_embeddings=rope, attention_mask=None, position_ids=positions)
        out = out[0] if isinstance(out, tuple) else out
        grad = torch.randn_like(out)
        with torch.profiler.record_function("backward"):
            out.backward(grad)
        del out, grad
    forward_end, peak = timeline(prof)
    weight_grads = sum(p.numel() * 2 for p in layer.parameters())
    return {"attention": attention, "forward_end_per_token": forward_end / tokens,
            "backward_rise_per_token": (peak - forward_end - weight_grads) / tokens}


def rows_of(rows: str, batch: int, length: int) -> tuple[int, int]:
    return (1, batch * length) if rows == "full" else (batch, length)


def estimate(case: str, config: dict = SMALL, batch: int = 2, length: int = 512) -> dict:
    """runner.plan.memory's count for the same case: bytes per token per layer, and in the head."""
    from runner.plan import memory

    dtype_name, lora, attention, rows, ckpt = CASES[case]
    batch, length = rows_of(rows, batch, length)
    settings = memory.Settings(
        weights_dtype=dtype_name, mixed_precision="bf16", batch=batch, length=length, attention=attention,
        peft={"method": "lora", **LORA} if lora else {"method": "none"}, padding_free=rows == "packed",
        activation_checkpointing=ckpt)
    parts = memory.activation_parts(config, settings)
    result = memory.peak(config, replace(settings, optim="sgd"))  # no optimizer states: one step from scratch
    return {"per_layer_per_token": parts["saved_per_layer"] / parts["tokens"],
            "head_per_token": parts["lm_head_saved"] / parts["tokens"],
            # what outlives the forward pass (saved tensors, weight copies the linears keep): backward's start
            # without the head's backward workspace
            "forward_end": result["moments"]["backward_start"] - result["parts"]["lm_head_workspace_backward"]
            - result["parts"]["weights"],
            "peak": result["peak_bytes"] - result["parts"]["weights"]}


def main(argv=None) -> None:
    top = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    top.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    top.add_argument("--model-type", default="llama", choices=["llama", "mistral", "qwen2", "qwen3"],
                     help="the same shape as another architecture (qwen3: per-head q/k norms, head_dim 32)")
    top.add_argument("--layer-backward", action="store_true", help="also one layer's backward workspace (CPU)")
    top.add_argument("--json", action="store_true")
    top.add_argument("--peak", action="store_true", help="also forward + backward under the CPU allocator timeline "
                                                         "(about 5-10 s a case)")
    args = top.parse_args(argv)
    import torch
    import transformers

    config = {**SMALL, "model_type": args.model_type, **({"head_dim": 32} if args.model_type == "qwen3" else {})}
    rows = []
    for case in args.cases:
        row = measure(case, config)
        row["estimate"] = estimate(case, config)
        if args.peak:
            row["cpu_peak"] = cpu_peak(case, config)
        rows.append(row)
    layer_rows = [layer_backward(a, config) for a in ("sdpa", "eager")] if args.layer_backward else []
    if args.json:
        print(json.dumps({"torch": torch.__version__, "transformers": transformers.__version__, "rows": rows,
                          "layer_backward": layer_rows}, indent=2))
        return
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, config {config}, batch 2 x 512\n")
    print("| case | measured B/token/layer | estimate | ratio | head measured B/token | head estimate |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        est = r["estimate"]
        print(f"| {r['case']} | {r['per_layer_per_token']:.1f} | {est['per_layer_per_token']:.1f} | "
              f"{est['per_layer_per_token'] / r['per_layer_per_token']:.3f} | {r['head_per_token']:.1f} | "
              f"{est['head_per_token']:.1f} |")
    if layer_rows:
        from runner.plan import activations
        from runner.plan import memory

        print("\nOne bf16 layer, 1 x 2048 tokens, B/token: how far backward rises above the end of forward (weight "
              "grads excluded), + the incoming gradient (r h, allocated before backward, counted in the workspace), "
              "vs runner.plan.activations' workspace:\n")
        for r in layer_rows:
            s = memory.Settings(batch=1, length=2048, attention=r["attention"])
            print(f"- {r['attention']}: measured {r['backward_rise_per_token']:.0f} + r h = "
                  f"{r['backward_rise_per_token'] + 2 * config['hidden_size']:.0f}, estimate "
                  f"{activations.layer_backward_bytes(config, s)}")
    if args.peak:
        mib = 2**20
        print("\nAllocated above the weights, MiB (CPU allocator timeline vs runner.plan.memory's moments, no optimizer):\n")
        print("| case | end of forward: measured | estimate | peak: measured | estimate | peak ratio |")
        print("|---|---|---|---|---|---|")
        for r in rows:
            m, e = r["cpu_peak"], r["estimate"]
            print(f"| {r['case']} | {m['forward_end'] / mib:.1f} | {e['forward_end'] / mib:.1f} | "
                  f"{m['peak'] / mib:.1f} | {e['peak'] / mib:.1f} | {e['peak'] / m['peak']:.2f} |")


if __name__ == "__main__":
    main()
