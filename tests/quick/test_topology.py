"""Topologies (runner.plan.topology) from the shipped Accelerate configs and the launch environment, and the
plan's batch arithmetic per topology (runner.plan.scale).
"""
from __future__ import annotations

import json

import pytest

from conftest import ROOT, base_recipe, write_jsonl
from runner.plan import scale
from runner.plan.topology import Topology, from_accelerate_config, from_environment
from commandline import cli

CONFIGS = ROOT / "accelerate_configs"


# --- topology, plan, refusals -------------------------------------------------------------------


@pytest.mark.parametrize("name, expected", [
    ("single_gpu", Topology(1, 1, "single")),
    ("multi_gpu", Topology(2, 1, "ddp")),
    ("multi_node_ddp", Topology(16, 2, "ddp")),
    ("deepspeed_zero2", Topology(2, 1, "deepspeed", 2, zero3_save_16bit_model=False,
                                 deepspeed_config_file=str(CONFIGS / "deepspeed" / "zero2.json"))),
    ("deepspeed_zero3", Topology(2, 1, "deepspeed", 3, zero3_save_16bit_model=True,
                                 deepspeed_config_file=str(CONFIGS / "deepspeed" / "zero3.json"))),
    ("deepspeed_zero3_offload", Topology(2, 1, "deepspeed", 3, offload_optimizer=True, offload_params=True,
                                         zero3_save_16bit_model=True,
                                         deepspeed_config_file=str(CONFIGS / "deepspeed" / "zero3_offload.json"))),
    ("fsdp2", Topology(2, 1, "fsdp")),
])
def test_every_shipped_config_parses_to_its_topology(name, expected):
    assert from_accelerate_config(str(CONFIGS / f"{name}.yaml")) == expected


def test_shipped_deepspeed_files_leave_the_recipe_values_to_transformers():
    for path in (CONFIGS / "deepspeed").glob("*.json"):
        config = json.loads(path.read_text())
        for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping"):
            assert config[key] == "auto", (path.name, key)
        assert "scheduler" not in config, "the recipe's schedule applies"
        if "offload_optimizer" in config["zero_optimization"]:  # DeepSpeed's CPU AdamW, with the recipe's values
            assert set(config["optimizer"]["params"].values()) == {"auto"}
        else:
            assert "optimizer" not in config, "the recipe's optim applies"
        if config["zero_optimization"]["stage"] == 3:  # save_model writes one whole model
            assert config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True


def test_topology_from_the_launch_environment():
    assert from_environment({}) == Topology()
    assert from_environment({"WORLD_SIZE": "16", "LOCAL_WORLD_SIZE": "8"}) == Topology(16, 2, "ddp")
    env = {"WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "4", "ACCELERATE_USE_DEEPSPEED": "true",
           "ACCELERATE_DEEPSPEED_CONFIG_FILE": str(CONFIGS / "deepspeed" / "zero3_offload.json")}
    assert from_environment(env) == Topology(4, 1, "deepspeed", 3, True, True, zero3_save_16bit_model=True,
                                             deepspeed_config_file=env["ACCELERATE_DEEPSPEED_CONFIG_FILE"])
    env = {"WORLD_SIZE": "2", "ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"}
    assert from_environment(env) == Topology(2, 1, "deepspeed", 2, zero3_save_16bit_model=False)
    env = {"WORLD_SIZE": "8", "ACCELERATE_USE_FSDP": "true", "FSDP_OFFLOAD_PARAMS": "true"}
    assert from_environment(env) == Topology(8, 1, "fsdp", offload_params=True)


def test_plan_for_a_world_size_shows_the_global_batch_and_steps_per_epoch(tmp_path, recipe_file):
    write_jsonl(tmp_path / "train.jsonl", [{"text": f"row {i}"} for i in range(100)])
    path = recipe_file(base_recipe(tmp_path, training={"per_device_train_batch_size": 4,
                                                       "gradient_accumulation_steps": 2, "max_steps": -1,
                                                       "num_train_epochs": 3, "packing": False}))
    result = cli("plan", str(path), "--world-size", "4", "--accelerate-config",
                 str(CONFIGS / "deepspeed_zero3.yaml"))
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["topology"] == {"world_size": 4, "num_machines": 1, "engine": "deepspeed", "zero_stage": 3,
                                "offload_optimizer": False, "offload_params": False, "zero3_save_16bit_model": True,
                                "deepspeed_config_file": str(CONFIGS / "deepspeed" / "zero3.json")}
    batch = plan["batch"]
    assert batch["global_batch_size"] == 32 and batch["per_device_train_batch_size"] == 4
    # 100 rows / 4 processes / 4 per device = 7 batches per process (25 rows, the last batch partial);
    # 2 of them per optimizer step -> 4 steps per epoch, 12 in 3 epochs
    assert batch["train_rows"] == 100 and batch["steps_per_epoch"] == 4 and batch["total_steps"] == 12
    single = json.loads(cli("plan", str(path)).stdout)["batch"]
    assert single["global_batch_size"] == 8 and single["steps_per_epoch"] == 13


def test_packing_or_hub_data_leave_steps_per_epoch_unknown(tmp_path):
    doc = {"data": {"train": {"hub": "x/y"}, "eval_fraction": None},
           "training": {"per_device_train_batch_size": 2, "gradient_accumulation_steps": 1, "max_steps": 5,
                        "num_train_epochs": 1}}
    batch = scale.batch_arithmetic(doc, Topology(2, 1, "ddp"))
    assert batch["steps_per_epoch"] is None and "Hub" in batch["steps_per_epoch_unknown"]
    assert batch["total_steps"] == 5 and batch["global_batch_size"] == 4
