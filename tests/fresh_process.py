"""A saved model loaded in a fresh process where importing peft fails: what a user without peft gets."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def logits_without_peft(folder: Path, ids: list[list[int]], timeout: int = 600):
    """The model's logits for a batch of token ids, from AutoModelForCausalLM.from_pretrained(folder) alone."""
    import torch

    code = ("import sys, json, torch; sys.modules['peft'] = None\n"
            "from transformers import AutoModelForCausalLM\n"
            f"m = AutoModelForCausalLM.from_pretrained({str(folder)!r}).eval()\n"
            f"x = torch.tensor({ids})\n"
            "with torch.no_grad(): print(json.dumps(m(input_ids=x).logits.float().tolist()))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-2000:]
    return torch.tensor(json.loads(done.stdout.strip().splitlines()[-1]))
