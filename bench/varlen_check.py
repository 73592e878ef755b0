"""The varlen attention on a GPU: same outputs as per-document sdpa, and its speed at the 1.1B shape.

    python bench/varlen_check.py

1. A small Llama in bf16 with the runner's varlen attention: a padding-free row of four documents
   gives the logits of each document run alone (sdpa), and gradients flow.
2. Attention alone, fwd+bwd, 32 query heads x 64, 4 KV heads, ~16k tokens in 15 documents (a packed
   step of batch 8 x 2048): varlen_attn vs sdpa with the dense block-diagonal mask transformers builds.
"""
import copy
import json
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, ".")
from runner.train import attention  # noqa: E402
from runner.launch import machine  # noqa: E402


def packed_models(dtype=torch.float32, device="cpu"):
    """The same small random Llama twice: with the runner's varlen attention, and with sdpa."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    attention.register()
    config = LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=8,
                         num_key_value_heads=2, vocab_size=200)
    torch.manual_seed(0)
    varlen = AutoModelForCausalLM.from_config(config, attn_implementation=attention.NAME, dtype=dtype).to(device)
    # a copy of the config: from_config records the attention choice on the config object it is given
    reference = AutoModelForCausalLM.from_config(copy.deepcopy(config), attn_implementation="sdpa",
                                                 dtype=dtype).to(device)
    assert varlen.config._attn_implementation == attention.NAME
    reference.load_state_dict(varlen.state_dict())
    return varlen, reference


def packed_batch(lengths, device="cpu"):
    """A padding-free row as TRL's collator makes it: documents back to back, positions restarting, cu_seq_lens."""
    docs = [torch.randint(0, 200, (n,), device=device) for n in lengths]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    batch = {"input_ids": torch.cat(docs)[None],
             "position_ids": torch.cat([torch.arange(n, device=device) for n in lengths])[None],
             "cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": max(lengths), "max_length_k": max(lengths)}
    return docs, batch


def model_check() -> dict:
    """A padding-free row of four documents through the varlen model vs each document alone (sdpa), bf16."""
    varlen, reference = packed_models(torch.bfloat16, "cuda")
    docs, batch = packed_batch([300, 1200, 57, 700], "cuda")
    packed = varlen(**batch, use_cache=False).logits[0].float()
    with torch.no_grad():
        alone = torch.cat([reference(input_ids=d[None], use_cache=False).logits[0] for d in docs]).float()
        leaky = reference(input_ids=batch["input_ids"], use_cache=False).logits[0].float()
    packed.sum().backward()
    return {"max_abs_diff_vs_per_document": (packed - alone).abs().max().item(),
            "max_abs_diff_one_long_sequence": (leaky - alone).abs().max().item(),
            "grad_nonzero": bool(varlen.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0)}


def timed(fn, repeat=10) -> float:
    """Milliseconds per call after one warm-up call."""
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeat * 1000


def kernel_check() -> dict:
    """Attention alone, forward + backward, ~16k tokens in 15 documents: varlen_attn vs sdpa with the block mask."""
    torch.manual_seed(0)
    lengths = torch.randint(128, 2049, (15,)).tolist()
    total = sum(lengths)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device="cuda")
    q, k, v = (torch.randn(total, heads, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
               for heads in (32, 4, 4))
    kernel = machine.varlen_kernel()
    options = attention._kernel_options(kernel, q, k, 64 ** -0.5)
    doc = torch.repeat_interleave(torch.arange(15, device="cuda"), torch.tensor(lengths, device="cuda"))
    mask = (doc[:, None] == doc[None, :]) & torch.ones(total, total, dtype=torch.bool, device="cuda").tril()

    def run_varlen():
        kernel(q, k, v, cu, cu, max(lengths), max(lengths), **options).sum().backward()

    def run_sdpa():
        F.scaled_dot_product_attention(q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None],
                                       attn_mask=mask, enable_gqa=True).sum().backward()

    out_v = kernel(q, k, v, cu, cu, max(lengths), max(lengths), **options)
    out_s = attention.per_document_sdpa(q, k, v, cu, 64 ** -0.5)
    return {"tokens": total, "documents": 15, "kernel_vs_per_document_sdpa": (out_v - out_s).abs().max().item(),
            "varlen_fwd_bwd_ms": timed(run_varlen), "sdpa_block_mask_fwd_bwd_ms": timed(run_sdpa)}


def main() -> None:
    result = {**model_check(), **kernel_check(), "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__}
    print("VARLEN " + json.dumps(result), flush=True)
    assert result["max_abs_diff_vs_per_document"] < 0.05 and result["grad_nonzero"]


if __name__ == "__main__":
    main()
