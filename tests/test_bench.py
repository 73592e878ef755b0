"""The overhead benchmark compares like with like: the runner's recipe resolves to the plain TRL script's settings."""
from __future__ import annotations

import ast

from runner import fast
from runner.plan import build_plan
from runner.recipe import load_recipe
from conftest import ROOT

from test_fast import CPU, H100


def plain_script_settings() -> dict:
    """The keyword arguments bench/plain_trl_sft.py passes to SFTConfig (read from its source, not run)."""
    tree = ast.parse((ROOT / "bench" / "plain_trl_sft.py").read_text())
    [call] = [node for node in ast.walk(tree) if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "SFTConfig"]
    return {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg != "output_dir"}


def test_overhead_recipe_resolves_to_the_plain_scripts_settings_on_cpu_and_gpu():
    plan = build_plan(load_recipe(str(ROOT / "bench" / "recipes" / "overhead.json")))
    plain = plain_script_settings()
    for machine in (CPU, H100):
        assert fast.decide(plan, machine) == {}, "a fast default left open would differ from the plain script"
    config = plan["trainer"]["config"]
    differ = {k: (config.get(k), v) for k, v in plain.items() if config.get(k) != v}
    assert differ == {}
    assert plan["model"]["dtype"] == "auto" and plan["model"]["attn_implementation"] is None


def test_overhead_sides_build_the_same_sft_config_but_for_named_equivalents(tmp_path):
    """Every SFTConfig field, defaults included, so a default the runner sets differently cannot slip in."""
    from trl import SFTConfig

    from runner.trainer import launch_config

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
