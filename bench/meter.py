"""Measure a trainer from the inside, identically for both sides: real tokens/s, steps, peak memory.

A forward pre-hook on the model counts the real tokens of every batch (the attention mask's ones, or
every token of a padding-free row) as a GPU tensor (no host sync per step); a callback takes the time
at the end of the warm-up steps and of the last step, synchronising the GPU only at those two points,
so the CPU/GPU overlap of the loop being measured is left alone.
"""
from __future__ import annotations

import json
import time

from transformers import TrainerCallback


class TokenMeter(TrainerCallback):
    def __init__(self, model, warmup: int):
        import torch

        self.torch, self.warmup = torch, warmup
        self.tokens = None
        self.marks = {}  # step -> (seconds, tokens so far)
        model.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module, args, kwargs):
        if not module.training:
            return
        ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        seen = mask.sum() if mask is not None else self.torch.tensor(ids.numel(), device=ids.device)
        self.tokens = seen if self.tokens is None else self.tokens + seen

    def _sync(self):
        if self.torch.cuda.is_available():
            self.torch.cuda.synchronize()

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step in (self.warmup, state.max_steps):
            self._sync()
            self.marks[state.global_step] = (time.perf_counter(), int(self.tokens.item()))

    def result(self, model) -> dict:
        (t0, n0), (t1, n1) = self.marks[self.warmup], self.marks[max(self.marks)]
        params = sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        tokens_per_s = (n1 - n0) / (t1 - t0)
        out = {"tokens_per_s": tokens_per_s, "measured_steps": max(self.marks) - self.warmup,
               "measured_tokens": n1 - n0, "seconds": t1 - t0, "parameters": params, "trainable": trainable}
        if self.torch.cuda.is_available():
            out["peak_gib"] = self.torch.cuda.max_memory_allocated() / 2**30
            out["gpu"] = self.torch.cuda.get_device_name(0)
            # 6·N·tokens/s over the H100 SXM's dense bf16 peak (989 TFLOP/s); attention FLOPs left out
            out["mfu_6n"] = 6 * params * tokens_per_s / 989e12
        return out


def report(result: dict, started: float, first_step: float | None) -> None:
    """One line the harness reads: RESULT {json}."""
    result["process_s"] = time.perf_counter() - started
    result["first_step_s"] = first_step
    print("RESULT " + json.dumps(result), flush=True)


class FirstStep(TrainerCallback):
    def __init__(self, started: float):
        self.started, self.at = started, None

    def on_step_end(self, args, state, control, **kwargs):
        if self.at is None:
            self.at = time.perf_counter() - self.started
