"""Variable-length attention for padding-free batches: documents packed into one row stay separate.

TRL's padding-free collator concatenates a batch into one row and passes the document boundaries
(`cu_seq_lens_q/k`, `max_length_q/k`, computed on the CPU) through the model's forward kwargs to
every attention call. With sdpa that row becomes one dense attention over ~16k tokens under a
block-diagonal mask (most of the step's time); here each document attends only to itself, through
PyTorch's own flash kernel `torch.nn.attention.varlen.varlen_attn` (torch >= 2.11, CUDA, sm80+).

Registered with transformers under NAME (AttentionInterface for the attention, AttentionMaskInterface
for the mask: no dense mask is built for an unpadded batch; a padded batch, as in generation, gets
sdpa's mask and sdpa's kernel). Imported only at launch, when the plan chose this path.
"""
from __future__ import annotations

import inspect

from runner.launch.machine import varlen_kernel

NAME = "runner_varlen"


def register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, varlen_attention_forward)
    AttentionMaskInterface.register(NAME, varlen_mask)


def varlen_mask(*args, attention_mask=None, **kwargs):
    """No mask for an unpadded batch (the boundaries travel as cu_seq_lens); sdpa's mask for a padded one."""
    if attention_mask is None:
        return None
    from transformers.masking_utils import sdpa_mask

    return sdpa_mask(*args, attention_mask=attention_mask, **kwargs)


def boundaries(kwargs: dict, batch: int, length: int, device):
    """(cu_seq_lens, max_length) of the documents in a one-row batch, or None for an ordinary causal batch.

    From the collator when it passed them; else from position_ids restarting at 0 (one host sync per layer).
    """
    import torch

    if kwargs.get("cu_seq_lens_q") is not None:
        return kwargs["cu_seq_lens_q"].to(device=device, dtype=torch.int32), int(kwargs["max_length_q"])
    position_ids = kwargs.get("position_ids")
    if batch != 1 or position_ids is None:
        return None
    starts = (position_ids[0, :length] == 0).nonzero().flatten()
    if starts.numel() <= 1:
        return None
    cu = torch.cat([starts, starts.new_tensor([length])]).to(device=device, dtype=torch.int32)
    return cu, int(cu.diff().max())


def varlen_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0,
                             scaling: float | None = None, **kwargs):
    """transformers' attention signature: query [batch, heads, seq, dim] -> ([batch, seq, heads, dim], None)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if kwargs.get("sliding_window") is not None or kwargs.get("softcap") is not None:
        raise ValueError(f"the {NAME} attention supports neither sliding windows nor soft-capping")
    batch, _, length, _ = query.shape
    found = None if attention_mask is not None else boundaries(kwargs, batch, length, query.device)
    if found is None:  # padded (mask given) or a single causal sequence per row: sdpa does it well
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    cu, longest = found
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # [tokens, heads, dim]
    kernel = varlen_kernel()
    if q.is_cuda and kernel is not None and dropout == 0.0:
        half = flash_dtype(q)
        out = kernel(q.to(half), k.to(half), v.to(half), cu, cu, longest, longest,
                     **_kernel_options(kernel, q, k, scaling)).to(q.dtype)
    else:  # CPU, or dropout: the same result one document at a time (slow, exact)
        out = per_document_sdpa(q, k, v, cu, scaling, dropout)
    return out.unsqueeze(0), None


def flash_dtype(q):
    """The dtype the flash kernel runs in: fp16 and bf16 only. fp32 inputs arise where layers stay in fp32
    (peft's k-bit preparation upcasts the norms of a QLoRA base, so the projections see fp32 under
    autocast); like transformers' own flash-attention path, they are cast to the autocast dtype (else
    bf16) for the kernel and the output back."""
    import torch

    if q.dtype in (torch.float16, torch.bfloat16):
        return q.dtype
    device = q.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else torch.bfloat16


def _kernel_options(kernel, q, k, scaling) -> dict:
    """Causal, GQA and scale, under the keyword names this torch's varlen_attn accepts."""
    names = _parameters(kernel)
    options = {"window_size": (-1, 0)} if "window_size" in names else {"is_causal": True}
    if "enable_gqa" in names and q.shape[1] != k.shape[1]:
        options["enable_gqa"] = True
    if scaling is not None and "scale" in names:
        options["scale"] = scaling
    elif scaling is not None and abs(scaling - q.shape[-1] ** -0.5) > 1e-9:
        raise ValueError("this torch's varlen_attn takes no scale and the model's attention is not 1/sqrt(head_dim)")
    return options


_SIGNATURES: dict = {}


def _parameters(fn) -> frozenset:
    if fn not in _SIGNATURES:
        _SIGNATURES[fn] = frozenset(inspect.signature(fn).parameters)
    return _SIGNATURES[fn]


def per_document_sdpa(q, k, v, cu, scaling=None, dropout: float = 0.0):
    """Reference path: causal sdpa on each document of a packed [tokens, heads, dim] row, concatenated."""
    import torch
    import torch.nn.functional as F

    groups = q.shape[1] // k.shape[1]
    pieces = []
    for start, end in zip(cu[:-1].tolist(), cu[1:].tolist()):
        qd, kd, vd = (t[start:end].transpose(0, 1) for t in (q, k, v))  # [heads, len, dim]
        if groups > 1:
            kd, vd = kd.repeat_interleave(groups, 0), vd.repeat_interleave(groups, 0)
        pieces.append(F.scaled_dot_product_attention(qd, kd, vd, is_causal=True, scale=scaling,
                                                     dropout_p=dropout).transpose(0, 1))
    return torch.cat(pieces, 0) if pieces else q.new_zeros(q.shape)
