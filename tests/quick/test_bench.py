"""The overhead benchmark compares like with like: the runner's recipe resolves to the plain TRL script's settings."""
from __future__ import annotations


from runner.plan import decisions
from runner.plan.build import build_plan
from runner.recipe.load import load_recipe
from bench_sources import plain_script_settings
from conftest import ROOT

from machines import CPU, H100


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
