"""The recipes that read real datasets as they are (ShareGPT pairs for DPO and for a reward model, SciTLDR, WMT22
through data.templates, the three mixed with Alpaca) run from the command line on SmolLM2's real weights, cut down to
a couple of steps: their paths, formats and templates resolve, and the summary shows the recipe's metric before and
after."""
from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.real

CUT = ["--set", "training.max_steps=2", "--set", "training.eval_strategy=no",
       "--set", "training.per_device_train_batch_size=2", "--set", "training.logging_steps=1"]
RECIPES = {
    "dpo_sharegpt": (["--set", "data.train.limit=24", "--set", "training.gradient_accumulation_steps=1",
                      "--set", "training.max_length=128"],
                     "rewards/margins: 0.0000 -> "),
    "mix_instruct": (["--set", "data.train.0.limit=8", "--set", "data.train.1.limit=4", "--set", "data.train.2.limit=4",
                      "--set", "data.eval.0.limit=2", "--set", "data.eval.1.limit=2", "--set", "training.max_length=256",
                      "--set", "evaluation.generation.max_new_tokens=8", "--set", "evaluation.baseline=false"],
                     "wmt22 bleu: "),
    # 36 pairs train, 4 held out; at max_length 512 12 and 2 are left (the check-data warning counts them)
    "reward_sharegpt": (["--set", "data.train.limit=40", "--set", "training.gradient_accumulation_steps=1",
                         "--set", "training.max_length=512"], "pairs: 2 -> 2"),
    "summarize_scitldr": (["--set", "data.train.limit=16", "--set", "data.eval.limit=4", "--set", "training.max_length=384",
                           "--set", "evaluation.generation.max_new_tokens=16"], "rougeL: "),
    "translate_wmt22": (["--set", "data.train.limit=16", "--set", "data.eval.limit=4", "--set", "training.max_length=128",
                         "--set", "evaluation.generation.max_new_tokens=16"], "bleu: "),
}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_a_real_data_recipe_runs_as_shipped(name, tmp_path, smollm2, shared_data):
    extra, shown = RECIPES[name]
    result = subprocess.run([sys.executable, "-m", "runner", f"recipes/{name}.json", "--set",
                             f"output.dir={tmp_path / name}", *CUT, *extra],
                            cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "finished in" in result.stdout and shown in result.stdout, result.stdout
