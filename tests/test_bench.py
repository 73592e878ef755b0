"""The overhead benchmark compares like with like: the runner's recipe resolves to the plain TRL script's settings."""
from __future__ import annotations

import ast

from runner import fast
from runner.plan import build_plan
from runner.recipe import load_recipe
from conftest import ROOT

CPU = {"gpus": 0, "gpu_memory_gib": None, "bf16": False, "cpus": 2, "varlen": False, "liger": False}
H100 = {"gpus": 1, "gpu_memory_gib": 79.2, "bf16": True, "cpus": 16, "varlen": True, "liger": True}


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
    assert config["pad_to_multiple_of"] in (None, 1) and config["packing"] is False and config["bf16"] is False
    assert plan["model"]["dtype"] == "auto" and plan["model"]["attn_implementation"] is None
