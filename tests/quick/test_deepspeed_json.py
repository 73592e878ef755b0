"""What the plan refuses under sharding (runner.plan.scale) and a DeepSpeed JSON checked against the recipe
(runner.plan.deepspeed_json), before anything launches.
"""
from __future__ import annotations

import copy
from pathlib import Path

import pytest

from conftest import ROOT, base_recipe, write_json, write_jsonl
from runner.plan import scale
from runner.recipe.schema import _fill
from runner.errors import RecipeError
from runner.plan.build import build_plan
from runner.recipe.load import load_recipe, thaw
from runner.plan.topology import Topology, from_accelerate_config, from_environment
from commandline import cli

CONFIGS = ROOT / "accelerate_configs"

QUICKSTART_TRAINING = thaw(load_recipe(str(ROOT / "recipes" / "quickstart.json"))["training"])


def _doc(quantization=None, dtype="auto", optim="adamw_torch", **training):
    quantization = copy.deepcopy(quantization or {"method": "none"})
    _fill(quantization, {"$ref": "#/$defs/quantization"})  # the schema's defaults, as a loaded recipe has them
    return {"model": {"dtype": dtype, "quantization": quantization},
            "training": {**QUICKSTART_TRAINING, "optim": optim, **training}}


ZERO3, FSDP = Topology(8, 1, "deepspeed", 3), Topology(8, 1, "fsdp")


def test_qlora_under_sharded_weights_needs_a_float_quant_storage():
    qlora = {"method": "bnb_4bit", "bnb_4bit_compute_dtype": "bfloat16"}
    for topology in (ZERO3, FSDP):
        problems = scale.check_topology(_doc(qlora), topology)
        assert [p.path for p in problems] == ["/model/quantization/bnb_4bit_quant_storage"]
        assert "set bnb_4bit_quant_storage and bnb_4bit_compute_dtype to 'bfloat16'" in problems[0].hint
    matching = qlora | {"bnb_4bit_quant_storage": "bfloat16"}
    assert scale.check_topology(_doc(matching, dtype="bfloat16"), ZERO3) == []
    assert scale.check_topology(_doc(matching, dtype="float16"), ZERO3)[0].hint.endswith("model.dtype to 'bfloat16'")
    assert scale.check_topology(_doc(qlora), Topology(8, 1, "deepspeed", 2)) == []  # ZeRO-2 keeps whole weights
    assert scale.check_topology(_doc(qlora), Topology(8, 1, "ddp")) == []
    eight_bit = scale.check_topology(_doc({"method": "bnb_8bit"}), FSDP)
    assert eight_bit[0].path == "/model/quantization/method" and "cannot be sharded by FSDP" in eight_bit[0].message


def test_dora_on_a_4bit_base_is_refused_where_the_weights_are_sharded():
    qlora = {"method": "bnb_4bit", "bnb_4bit_compute_dtype": "float32", "bnb_4bit_quant_storage": "float32"}
    doc = {**_doc(qlora), "peft": {"method": "lora", "use_dora": True}}
    for topology in (ZERO3, FSDP):
        [problem] = scale.check_topology(doc, topology)
        assert problem.path == "/peft/use_dora" and "DoRA on a 4-bit base fails under" in problem.message
    assert scale.check_topology(doc, Topology(8, 1, "deepspeed", 2)) == []
    assert scale.check_topology({**doc, "peft": {"method": "lora", "use_dora": False}}, ZERO3) == []
    assert scale.check_topology({**_doc(), "peft": {"method": "lora", "use_dora": True}}, ZERO3) == []  # no 4-bit base


def test_only_adamw_is_accepted_with_an_offloaded_optimizer():
    offload = Topology(8, 1, "deepspeed", 3, offload_optimizer=True, offload_params=True)
    for optim in ("paged_adamw_8bit", "adafactor", "sgd"):
        assert scale.check_topology(_doc(optim=optim), offload)[0].path == "/training/optim"
    assert scale.check_topology(_doc(optim="adamw_torch"), offload) == []
    assert scale.check_topology(_doc(optim="adamw_torch_fused"), offload) == []
    assert scale.check_topology(_doc(optim="paged_adamw_8bit"), ZERO3) == []


def _zero3_yaml(folder, zero: dict) -> Path:
    """A user's own ZeRO-3 setup: an Accelerate YAML naming a DeepSpeed JSON beside it."""
    write_json(folder / "ds.json", {"train_micro_batch_size_per_gpu": "auto", "zero_optimization": {"stage": 3, **zero}})
    (folder / "ds.yaml").write_text("compute_environment: LOCAL_MACHINE\ndistributed_type: DEEPSPEED\n"
                                    f"deepspeed_config:\n  deepspeed_config_file: {folder / 'ds.json'}\n"
                                    "num_processes: 2\n")
    return folder / "ds.yaml"


@pytest.mark.parametrize("zero, launch_flag, whole", [
    ({"stage3_gather_16bit_weights_on_model_save": True}, False, True),
    ({"stage3_gather_fp16_weights_on_model_save": True}, False, True),  # DeepSpeed's older name
    ({"stage3_gather_16bit_weights_on_model_save": False}, True, False),
    ({}, True, False),  # DeepSpeed's default is off
    ({"stage3_gather_16bit_weights_on_model_save": "auto"}, False, False),  # Accelerate fills auto: its default, off
    ({"stage3_gather_16bit_weights_on_model_save": "auto"}, True, True),  # accelerate launch --zero3_save_16bit_model true
])
def test_zero3_without_the_16bit_gather_on_save_is_refused_for_a_whole_model(tmp_path, zero, launch_flag, whole):
    topology = from_accelerate_config(str(_zero3_yaml(tmp_path, zero)))
    env = {"WORLD_SIZE": "2", "ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_CONFIG_FILE": str(tmp_path / "ds.json"),
           "ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL": "true" if launch_flag else "false"}
    launched = from_environment(env)  # what a launched rank reads
    assert launched.zero3_save_16bit_model is whole
    assert topology.zero3_save_16bit_model is (whole and not launch_flag)  # plan sees the file, not the flag
    problems = scale.check_topology({**_doc(), "peft": {"method": "none"}}, launched)
    assert [p.path for p in problems] == ([] if whole else ["zero_optimization.stage3_gather_16bit_weights_on_model_save"])
    # an adapter is saved from DeepSpeed's consolidated trainable parameters, which needs no gather
    assert scale.check_topology({**_doc(), "peft": {"method": "lora"}}, launched) == []


def test_zero3_16bit_save_from_a_yaml_without_a_json_and_a_yaml_accelerate_would_refuse(tmp_path):
    write_json(tmp_path / "ds.json", {"zero_optimization": {"stage": 3}})
    plain = tmp_path / "plain.yaml"
    plain.write_text("distributed_type: DEEPSPEED\nnum_processes: 2\ndeepspeed_config:\n  zero_stage: 3\n"
                     "  zero3_save_16bit_model: true\n")
    assert from_accelerate_config(str(plain)).zero3_save_16bit_model is True
    both = tmp_path / "both.yaml"
    both.write_text(f"distributed_type: DEEPSPEED\nnum_processes: 2\ndeepspeed_config:\n  deepspeed_config_file: "
                    f"{tmp_path / 'ds.json'}\n  zero3_save_16bit_model: true\n")
    with pytest.raises(ValueError, match="also sets zero3_save_16bit_model under deepspeed_config: Accelerate refuses"):
        from_accelerate_config(str(both))


def test_a_partial_zero3_save_is_refused_by_plan_before_launch(tmp_path, recipe_file):
    write_jsonl(tmp_path / "train.jsonl", [{"text": "x"}])
    path = recipe_file(base_recipe(tmp_path))
    result = cli("plan", str(path), "--accelerate-config", str(_zero3_yaml(tmp_path, {})))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "zero_optimization.stage3_gather_16bit_weights_on_model_save: ZeRO-3 without the 16-bit gather" in result.stderr
    assert "true in the DeepSpeed JSON" in result.stderr


def _user_deepspeed(folder, **sections) -> Topology:
    config = {"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
              "zero_optimization": {"stage": 2}, **sections}
    write_json(folder / "ds.json", config)
    return Topology(2, 1, "deepspeed", 2, zero3_save_16bit_model=False, deepspeed_config_file=str(folder / "ds.json"))


def test_a_users_deepspeed_values_that_transformers_would_reject_at_the_first_step_are_found_by_plan(tmp_path):
    doc = _doc(per_device_train_batch_size=32, learning_rate=2e-3)
    assert scale.check_topology(doc, _user_deepspeed(tmp_path)) == []
    topology = _user_deepspeed(tmp_path, train_micro_batch_size_per_gpu=3, train_batch_size=64, gradient_clipping=1.0,
                               optimizer={"type": "AdamW", "params": {"lr": 1e-4, "betas": [0.9, 0.95], "eps": "auto"}})
    problems = {p.path: p for p in scale.check_topology(doc, topology)}
    assert "ds.json sets train_micro_batch_size_per_gpu = 3, the recipe 32" in problems["/training/per_device_train_batch_size"].message
    assert "\"auto\"" in problems["/training/per_device_train_batch_size"].hint
    assert "optimizer.params.lr = 0.0001, the recipe 0.002" in problems["/training/learning_rate"].message
    assert "optimizer.params.betas = [0.9, 0.95], the recipe [0.9, 0.999]" in problems["/training/adam_beta1"].message
    assert set(problems) == {"/training/per_device_train_batch_size", "/training/learning_rate", "/training/adam_beta1"}
    # 64 = 32 per device x 1 x 2 processes and clipping 1.0 = max_grad_norm: equal values pass


def test_a_bf16_decided_at_launch_is_checked_against_the_deepspeed_json_before_the_model_loads(tmp_path):
    from runner.plan import deepspeed_json

    doc = _doc(bf16=None)
    topology = _user_deepspeed(tmp_path, bf16={"enabled": True})
    assert scale.check_topology(doc, topology) == []  # null: nothing to compare in the plan
    deepspeed_json.check_precision(doc, topology, bf16=True, fp16=False)  # a bf16 GPU decides the same
    with pytest.raises(RecipeError) as err:  # a GPU without bf16 decides otherwise
        deepspeed_json.check_precision(doc, topology, bf16=False, fp16=False)
    assert "ds.json sets bf16.enabled = true, the value decided for this machine false" in err.value.render()


def test_deepspeed_sections_that_would_silently_replace_the_recipes_schedule_or_optimizer_are_refused(tmp_path):
    doc = _doc(optim="paged_adamw_8bit")
    topology = _user_deepspeed(tmp_path, scheduler={"type": "WarmupDecayLR", "params": {"warmup_num_steps": "auto"}},
                               optimizer={"type": "AdamW", "params": {"lr": "auto"}})
    problems = {p.path: p for p in scale.check_topology(doc, topology)}
    assert "has a \"scheduler\" section (WarmupDecayLR): DeepSpeed's scheduler would silently replace the recipe's " \
           "lr_scheduler_type 'cosine'" in problems["/training/lr_scheduler_type"].message
    assert "silently replace the recipe's optim 'paged_adamw_8bit'" in problems["/training/optim"].message
    adamw = _user_deepspeed(tmp_path, optimizer={"type": "AdamW", "params": {"lr": "auto"}})
    assert scale.check_topology(_doc(optim="adamw_torch"), adamw) == []  # the same algorithm, the recipe's values


def test_the_shipped_deepspeed_files_agree_with_every_shipped_recipe():
    from runner.plan import deepspeed_json

    for config in CONFIGS.glob("deepspeed_*.yaml"):
        topology = from_accelerate_config(str(config), 8)
        for recipe in (ROOT / "recipes").glob("*.json"):
            assert deepspeed_json.check(thaw(load_recipe(str(recipe)).doc), topology) == [], (config.name, recipe.name)


def test_refusals_reach_the_plan(tmp_path, recipe_file):
    write_jsonl(tmp_path / "train.jsonl", [{"text": "x"}])
    recipe = load_recipe(recipe_file(base_recipe(tmp_path, training={"optim": "adamw_8bit"})))
    build_plan(recipe)  # one process: fine
    with pytest.raises(RecipeError) as err:
        build_plan(recipe, from_accelerate_config(str(CONFIGS / "deepspeed_zero3_offload.yaml"), 8))
    assert "/training/optim: 'adamw_8bit' cannot step an optimizer offloaded to CPU memory" in err.value.render()
