"""The plain TRL scripts' settings, read from bench/ sources (never run), for the tests that compare both sides."""
from __future__ import annotations

import ast

from conftest import ROOT


def plain_script_settings() -> dict:
    """The keyword arguments bench/plain_trl_sft.py passes to SFTConfig."""
    tree = ast.parse((ROOT / "bench" / "plain_trl_sft.py").read_text())
    [call] = [node for node in ast.walk(tree) if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "SFTConfig"]
    return {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg != "output_dir"}


def plain_smollm2_settings(bf16: bool) -> tuple[dict, dict]:
    """bench/plain_trl_smollm2.py's SFTConfig keywords in its equal-settings mode, and its LoraConfig keywords:
    REQUIRED | EQUAL | bf16."""
    tree = ast.parse((ROOT / "bench" / "plain_trl_smollm2.py").read_text())
    found = {}
    for node in ast.walk(tree):
        name = getattr(node.targets[0], "id", "") if isinstance(node, ast.Assign) else ""
        if name in ("REQUIRED", "EQUAL", "peft_config"):
            found[name] = {k.arg: ast.literal_eval(k.value) for k in node.value.keywords
                           if k.arg not in ("output_dir", "max_steps")}  # the script's arguments
    return {**found["REQUIRED"], **found["EQUAL"], "bf16": bf16}, found["peft_config"]
