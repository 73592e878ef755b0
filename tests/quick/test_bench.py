"""The overhead benchmark compares like with like: the runner's recipe resolves to the plain TRL script's settings."""
from __future__ import annotations

import ast



from runner.plan import decisions
from runner.plan.build import build_plan
from runner.recipe.load import load_recipe
from conftest import ROOT

from machines import CPU, H100


def plain_script_settings() -> dict:
    """The keyword arguments bench/plain_trl_sft.py passes to SFTConfig (read from its source, not run)."""
    tree = ast.parse((ROOT / "bench" / "plain_trl_sft.py").read_text())
    [call] = [node for node in ast.walk(tree) if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "SFTConfig"]
    return {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg != "output_dir"}


def test_overhead_recipe_resolves_to_the_plain_scripts_settings_on_cpu_and_gpu():
    plan = build_plan(load_recipe(str(ROOT / "bench" / "recipes" / "overhead.json")))
    plain = plain_script_settings()
    for machine in (CPU, H100):
        # only the device (use_cpu, no recipe key: transformers picks the same one) is left to the machine
        assert set(decisions.decide(plan, machine)) == {"/training/use_cpu"}, "an open fast default differs from plain"
    config = plan["trainer"]["config"]
    differ = {k: (config.get(k), v) for k, v in plain.items() if config.get(k) != v}
    assert differ == {}
    assert plan["model"]["dtype"] == "auto" and plan["model"]["attn_implementation"] is None


def plain_smollm2_settings(bf16: bool) -> tuple[dict, dict]:
    """bench/plain_trl_smollm2.py's SFTConfig keywords in its equal-settings mode, and its LoraConfig keywords
    (read from its source, not run): REQUIRED | EQUAL | bf16."""
    tree = ast.parse((ROOT / "bench" / "plain_trl_smollm2.py").read_text())
    found = {}
    for node in ast.walk(tree):
        name = getattr(node.targets[0], "id", "") if isinstance(node, ast.Assign) else ""
        if name in ("REQUIRED", "EQUAL", "peft_config"):
            found[name] = {k.arg: ast.literal_eval(k.value) for k in node.value.keywords
                           if k.arg not in ("output_dir", "max_steps")}  # the script's arguments
    return {**found["REQUIRED"], **found["EQUAL"], "bf16": bf16}, found["peft_config"]
