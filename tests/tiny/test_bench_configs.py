"""The benchmarks compare like with like: both sides build the same TRL/transformers configs, field by field."""
from __future__ import annotations

import pytest

from runner.launch import decide as fast

from runner.plan import decisions
from runner.plan.build import build_plan
from runner.recipe.load import load_recipe
from bench_sources import plain_script_settings, plain_smollm2_settings
from conftest import ROOT

from machines import CPU



def test_overhead_sides_build_the_same_sft_config_but_for_named_equivalents(tmp_path):
    """Every SFTConfig field, defaults included, so a default the runner sets differently cannot slip in."""
    from trl import SFTConfig

    from runner.train.trainer import launch_config

    plan = build_plan(load_recipe(str(ROOT / "bench" / "recipes" / "overhead.json")))
    runner = SFTConfig(**{**launch_config(plan, {"gpus": [], "bf16": False}), "output_dir": str(tmp_path)}).to_dict()
    plain = SFTConfig(**plain_script_settings(), output_dir=str(tmp_path)).to_dict()
    differ = {k: (runner[k], plain[k]) for k in runner if runner[k] != plain[k]}
    assert differ == {
        "completion_only_loss": (True, None),  # None: on for prompt/completion data, which this is
        "ddp_find_unused_parameters": (False, None),  # one process: no DDP
        "logging_nan_inf_filter": (False, True),  # the runner reports a NaN instead of hiding it; no extra sync
        "pad_to_multiple_of": (1, None),  # padding to a multiple of 1 is no padding
        "use_cpu": (True, False),  # launch_config's view of this CPU machine; transformers uses the CPU anyway here
        "dataloader_pin_memory": (False, True),  # set by use_cpu; pinning does nothing without a GPU
    }


@pytest.mark.parametrize("bf16", [True, False])
def test_real_model_sides_build_the_same_configs_in_equal_mode(tmp_path, bf16):
    """bench/overhead.py --model smollm2 --compare equal: the runner's recipe with training.bf16 pinned resolves, on a
    CPU, to the plain script's SFTConfig and LoraConfig, but for named equivalents."""
    from peft import LoraConfig
    from trl import SFTConfig

    from runner.train.trainer import launch_config

    recipe = load_recipe(str(ROOT / "bench" / "recipes" / "smollm2_lora.json"), [f"training.bf16={str(bf16).lower()}"])
    plan = build_plan(recipe)
    config = launch_config(fast.apply(plan, decisions.decide(plan, CPU)), {"gpus": [], "bf16": False})
    settings, lora = plain_smollm2_settings(bf16)
    runner = SFTConfig(**{**config, "output_dir": str(tmp_path)}).to_dict()
    plain = SFTConfig(**settings, output_dir=str(tmp_path), max_steps=config["max_steps"]).to_dict()
    assert {k: (runner[k], plain[k]) for k in runner if runner[k] != plain[k]} == {
        "completion_only_loss": (True, None),  # None: on for prompt/completion data, which this is
        "ddp_find_unused_parameters": (False, None),  # one process: no DDP
    }
    assert plan["model"]["dtype"] is None and decisions.decide(plan, CPU)["/model/dtype"]["value"] == "auto"  # fp32, as plain
    runner_lora, plain_lora = LoraConfig(**plan["peft"]["kwargs"]).to_dict(), LoraConfig(**lora).to_dict()
    assert {k: (runner_lora[k], plain_lora[k]) for k in runner_lora if runner_lora[k] != plain_lora[k]} == {
        "revision": ("main", None),  # the base model's revision; None loads main
    }
