"""The fast-default rules (runner.plan.decisions, runner.launch.decide): pure, for any machine, given as a dict."""
import copy
import json

import pytest

from runner.launch import decide as fast
from runner.plan import decisions
from runner.plan import build as plan_module
from runner.recipe.load import load_recipe
from runner.plan.topology import Topology

from conftest import TINY_MODEL, base_recipe, write_jsonl
from machines import CPU, EPYC_ZEN4, GRAVITON2, GRAVITON3, H100, SAPPHIRE_RAPIDS, SKYLAKE, on_cpu


def planned(tmp_path, recipe_file, **sections):
    write_jsonl(tmp_path / "train.jsonl", [{"text": f"row {i} says hello"} for i in range(16)])
    return plan_module.build_plan(load_recipe(str(recipe_file(base_recipe(tmp_path, **sections)))))


def values(decisions):
    return {path: d["value"] for path, d in decisions.items()}


def test_plan_lists_every_open_setting_with_its_rule(tmp_path, recipe_file):
    section = planned(tmp_path, recipe_file, training={"optim": "adamw_torch"})["fast_defaults"]
    assert section["settings"]["/training/optim"] == {"recipe": "adamw_torch", "rule": "set in the recipe"}
    assert section["settings"]["/training/packing"]["recipe"] is None
    assert "varlen" in section["settings"]["/training/packing"]["rule"]
    assert section["facts"]["model_type"] == "llama"


def test_on_a_gpu_with_varlen_everything_fast_is_chosen(tmp_path, recipe_file):
    decided = values(decisions.decide(planned(tmp_path, recipe_file), H100))
    assert decided == {"/training/use_cpu": False, "/training/bf16": True, "/model/dtype": "bfloat16",
                       "/training/packing": True,
                       "/model/attn_implementation": "runner_varlen", "/training/pad_to_multiple_of": None,
                       "/training/activation_checkpointing": False,  # the tiny model's estimate fits easily
                       "/training/use_liger_kernel": True, "/training/optim": "adamw_torch_fused",
                       "/training/dataloader_num_workers": 4}


def test_on_cpu_every_rule_falls_back_to_the_plain_setting(tmp_path, recipe_file):
    decided = values(decisions.decide(planned(tmp_path, recipe_file), CPU))
    assert decided == {"/training/use_cpu": True, "/training/bf16": False, "/model/dtype": "auto",
                       "/training/packing": False,
                       "/training/pad_to_multiple_of": None,
                       "/training/activation_checkpointing": False, "/training/use_liger_kernel": False,
                       "/training/optim": "adamw_torch", "/training/dataloader_num_workers": 0}


@pytest.mark.parametrize("cpuinfo, bf16, feature", [
    (EPYC_ZEN4, True, "avx512_bf16"), (SAPPHIRE_RAPIDS, True, "amx_bf16"), (GRAVITON3, True, "bf16"),
    (SKYLAKE, False, None), (GRAVITON2, False, None), ("", False, None),
])
def test_cpu_bf16_follows_the_cpu_flag_that_says_it_is_native(tmp_path, recipe_file, cpuinfo, bf16, feature):
    decided = decisions.decide(planned(tmp_path, recipe_file), on_cpu(cpuinfo))
    assert decided["/training/bf16"]["value"] is bf16
    reason = decided["/training/bf16"]["reason"]
    assert (f"{feature} in /proc/cpuinfo" in reason) if bf16 else ("no native bf16" in reason)
    # autocast over the weights as loaded (TRL's CPU default too): bf16 weights on a CPU were not measured
    assert decided["/model/dtype"]["value"] == "auto"
    assert values(decided)["/training/optim"] == "adamw_torch"  # the other CPU rules are unchanged


def test_deepspeed_on_a_cpu_keeps_fp32(tmp_path, recipe_file):
    # DeepSpeed's bf16 is bf16 weights, not the autocast measured, and it breaks fp32-stored 4-bit weights
    write_jsonl(tmp_path / "train.jsonl", [{"text": "hello"}] * 4)
    recipe = load_recipe(str(recipe_file(base_recipe(tmp_path))))
    for topology, bf16 in ((Topology(2, 1, "deepspeed", 3), False), (Topology(2, 1, "ddp"), True)):
        decision = decisions.decide(plan_module.build_plan(recipe, topology), on_cpu(EPYC_ZEN4))["/training/bf16"]
        assert decision["value"] is bf16 and ("DeepSpeed" in decision["reason"]) is not bf16


def test_fp16_in_the_recipe_keeps_bf16_off(tmp_path, recipe_file):
    for machine in (H100, on_cpu(EPYC_ZEN4)):
        decision = decisions.decide(planned(tmp_path, recipe_file, training={"fp16": True}), machine)["/training/bf16"]
        assert decision == {"value": False, "reason": "fp16 is on in the recipe"}


def test_recipe_values_are_never_overridden(tmp_path, recipe_file):
    plan = planned(tmp_path, recipe_file, model={"dtype": "float32"},
                   training={"bf16": False, "packing": False, "optim": "adamw_torch", "activation_checkpointing": False,
                             "use_liger_kernel": False, "dataloader_num_workers": 1, "pad_to_multiple_of": 16})
    decided = decisions.decide(plan, H100)
    assert values(decided) == {"/training/use_cpu": False}  # only what no recipe sets; packing off: no varlen
    resolved = fast.apply(plan, decided)
    assert resolved["trainer"]["config"]["pad_to_multiple_of"] == 16 and resolved["model"]["dtype"] == "float32"


def test_gpu_without_varlen_pads_to_a_bucketed_multiple(tmp_path, recipe_file):
    plan = planned(tmp_path, recipe_file, training={"max_length": 2048})
    decided = decisions.decide(plan, {**H100, "varlen": False})
    assert values(decided)["/training/packing"] is False and "/model/attn_implementation" not in decided
    assert values(decided)["/training/pad_to_multiple_of"] == 256
    assert decisions.pad_multiple(1024, True, False)[0] == 128 and decisions.pad_multiple(64, True, False)[0] == 8


@pytest.mark.parametrize("needed, expected", [(30.0, False), (75.0, True)])
def test_checkpointing_follows_the_memory_estimate(tmp_path, recipe_file, needed, expected):
    plan = planned(tmp_path, recipe_file)
    plan["memory"] = {"per_device_gib": {"activation_checkpointing_off": needed, "activation_checkpointing_on": 20.0}}
    decision = decisions.decide(plan, H100)["/training/activation_checkpointing"]
    assert decision["value"] is expected and f"{needed:.1f} GiB" in decision["reason"]


def test_checkpointing_stays_on_without_a_memory_estimate(tmp_path, recipe_file):
    plan = planned(tmp_path, recipe_file)
    del plan["memory"]  # a plan.json written before the estimate existed
    decision = decisions.decide(plan, H100)["/training/activation_checkpointing"]
    assert decision["value"] is True and "no memory estimate" in decision["reason"]


def test_prefix_tuning_never_gets_activation_checkpointing(tmp_path, recipe_file):
    plan = planned(tmp_path, recipe_file, peft={"method": "prefix_tuning", "num_virtual_tokens": 4})
    plan["memory"]["per_device_gib"]["activation_checkpointing_off"] = 500.0  # would otherwise turn it on
    decision = decisions.decide(plan, H100)["/training/activation_checkpointing"]
    assert decision["value"] is False and "prefix tuning" in decision["reason"]


def test_memory_estimate_assumes_the_fast_dtype_and_optimizer_when_left_null(tmp_path, recipe_file):
    left_null = planned(tmp_path, recipe_file, training={"max_length": 64})["memory"]
    spelled_out = planned(tmp_path, recipe_file, model={"dtype": "bfloat16"},
                          training={"max_length": 64, "optim": "adamw_torch_fused"})["memory"]
    assert left_null["per_device_gib"] == spelled_out["per_device_gib"]
    assert any("model.dtype null" in a for a in left_null["assumptions"])
    assert any("training.optim null" in a for a in left_null["assumptions"])


def test_packing_is_refused_where_documents_could_mix(tmp_path, recipe_file):
    eager = planned(tmp_path, recipe_file, model={"attn_implementation": "sdpa"})
    assert values(decisions.decide(eager, H100))["/training/packing"] is False
    windowed = copy.deepcopy(planned(tmp_path, recipe_file))
    windowed["fast_defaults"]["facts"]["sliding_window"] = True
    assert values(decisions.decide(windowed, H100))["/training/packing"] is False


def test_dpo_has_no_packing_to_decide(tmp_path, recipe_file):
    write_jsonl(tmp_path / "train.jsonl", [{"prompt": "p", "chosen": "yes", "rejected": "no"}] * 4)
    recipe = base_recipe(tmp_path, task="dpo", data={"train": {"path": "train.jsonl"}, "format": "preference"})
    plan = plan_module.build_plan(load_recipe(str(recipe_file(recipe))))
    decided = decisions.decide(plan, H100)
    assert "/training/packing" not in decided and "/model/attn_implementation" not in decided
    assert decided["/training/use_liger_kernel"]["value"] is False


def test_liger_asked_for_but_missing_is_a_recipe_error(tmp_path, recipe_file):
    from runner.errors import RecipeError

    plan = planned(tmp_path, recipe_file, training={"use_liger_kernel": True})
    with pytest.raises(RecipeError) as found:
        fast.check_installed(plan)
    assert found.value.problems[0].path == "/training/use_liger_kernel"


# --- activation checkpointing from the estimate of the settings decided ---------------------------

A100_40 = {**H100, "gpu_memory_gib": 39.4}  # 90%: 35.5 GiB


def tinyllama_plan(tmp_path, recipe_file, **training):
    """The 1.1B TinyLlama shape (bench/throughput.py's rows), batch 8 x 2048, everything fast left null."""
    import shutil

    model_dir = tmp_path / "tinyllama"
    shutil.copytree(TINY_MODEL, model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    config.update(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                  num_key_value_heads=4, vocab_size=32000, tie_word_embeddings=False, max_position_embeddings=2048)
    (model_dir / "config.json").write_text(json.dumps(config))
    return planned(tmp_path, recipe_file, model={"name_or_path": str(model_dir), "init": "random"},
                   training={"per_device_train_batch_size": 8, "max_length": 2048, **training})


def test_checkpointing_is_decided_on_the_estimate_for_the_decided_kernels(tmp_path, recipe_file):
    plan = tinyllama_plan(tmp_path, recipe_file)
    # the plan cannot know the machine: it counts padded sdpa rows without Liger, and says so
    assumptions = " ".join(plan["memory"]["assumptions"])
    assert "use_liger_kernel null" in assumptions and "packing null" in assumptions
    planned_off = plan["memory"]["per_device_gib"]["activation_checkpointing_off"]
    assert planned_off == 45.02  # padded, no Liger: over 90% of a 40 GB GPU (35.5 GiB), would not fit
    # with varlen and Liger, the launch recomputes: padding-free rows, Liger layers (measured on an H100: 27.1 GiB
    # peak allocated with checkpointing off), which fit in 90% of 40 GB: checkpointing off
    decision = decisions.decide(plan, A100_40)["/training/activation_checkpointing"]
    assert decision["value"] is False, decision
    assert "liger True" in decision["reason"] and "padding_free True" in decision["reason"]
    needed = float(decision["reason"].split("estimated ")[1].split(" GiB")[0])
    assert needed == 30.5  # at least the measured peak plus allocator slack (27.1 x 1.1 = 29.8), under the 45.02 planned
    # the same GPU without the kernels: the decided settings are the plan's, which do not fit
    plain = decisions.decide(plan, {**A100_40, "varlen": False, "liger": False})["/training/activation_checkpointing"]
    assert plain["value"] is True and "liger False" in plain["reason"]


def test_a_gpu_without_bf16_recomputes_with_the_weights_auto_loads(tmp_path, recipe_file):
    # V100-like: no bf16, so dtype is decided `auto` (fp32 for a random init) and training runs without autocast
    plan = tinyllama_plan(tmp_path, recipe_file)
    decided = decisions.decide(plan, {**A100_40, "bf16": False, "varlen": False, "liger": False})
    assert decided["/model/dtype"]["value"] == "auto"
    reason = decided["/training/activation_checkpointing"]["reason"]
    assert "weights_dtype float32" in reason and "mixed_precision no" in reason
    assert decided["/training/activation_checkpointing"]["value"] is True  # fp32 everything: far over 35 GiB


def test_recipe_settings_enter_the_recomputed_estimate(tmp_path, recipe_file):
    # the recipe fixes Liger off and padded rows: the launch has nothing to change, so the plan's figure decides
    plan = tinyllama_plan(tmp_path, recipe_file, use_liger_kernel=False, packing=False)
    decided = decisions.memory_as_decided(plan, decisions.decide(plan, A100_40), True, False)
    assert decided["per_device_gib"] == plan["memory"]["per_device_gib"]
    assert not any("use_liger_kernel null" in a for a in plan["memory"]["assumptions"])


def test_steps_per_epoch_are_conditional_while_packing_is_left_to_the_launch(tmp_path, recipe_file):
    batch = planned(tmp_path, recipe_file, training={"max_steps": -1, "num_train_epochs": 2})["batch"]
    assert batch["steps_per_epoch"] is None and "packing is null" in batch["steps_per_epoch_unknown"]
    assert batch["steps_per_epoch_if_not_packed"] == 4 and batch["total_steps_if_not_packed"] == 8  # 16 rows / 4
    fixed = planned(tmp_path, recipe_file, training={"max_steps": -1, "num_train_epochs": 2, "packing": False})
    assert fixed["batch"]["steps_per_epoch"] == 4 and fixed["batch"]["total_steps"] == 8
    # packing that can never be switched on (documents would mix): the count stands
    wrapped = planned(tmp_path, recipe_file, training={"max_steps": -1, "packing_strategy": "wrapped"})
    assert wrapped["batch"]["steps_per_epoch"] == 4


def test_a_resolved_plan_decides_the_same_again(tmp_path, recipe_file):
    # quantize and eval resolve the run's saved (already resolved) plan once more
    plan = planned(tmp_path, recipe_file)
    once = fast.apply(plan, decisions.decide(plan, H100))
    twice = fast.apply(once, decisions.decide(once, H100))
    assert twice["model"] == once["model"] and twice["trainer"]["config"] == once["trainer"]["config"]
    assert once["trainer"]["config"]["packing"] is True and once["model"]["attn_implementation"] == "runner_varlen"
    fast.check_same_decisions(twice, once)


def test_resuming_where_the_rules_decide_otherwise_is_refused(tmp_path, recipe_file):
    from runner.errors import RecipeError

    plan = planned(tmp_path, recipe_file)
    on_h100 = fast.apply(plan, decisions.decide(plan, H100))
    on_a_cpu = fast.apply(plan, decisions.decide(plan, CPU))
    with pytest.raises(RecipeError) as found:
        fast.check_same_decisions(on_a_cpu, on_h100)
    paths = [p.path for p in found.value.problems]
    assert "/training/packing" in paths and "/model/dtype" in paths
    # a CPU run resumed on a CPU without native bf16 would change precision in the middle: refused
    with pytest.raises(RecipeError) as found:
        fast.check_same_decisions(on_a_cpu, fast.apply(plan, decisions.decide(plan, on_cpu(EPYC_ZEN4))))
    assert [p.path for p in found.value.problems] == ["/training/bf16"]
    # another GPU's memory or CPU count changes checkpointing or workers, not what is computed: resumable
    small = fast.apply(plan, decisions.decide(plan, {**H100, "gpu_memory_gib": 0.5, "cpus": 3}))
    assert decided(small, "/training/activation_checkpointing") != decided(on_h100, "/training/activation_checkpointing")
    assert decided(small, "/training/dataloader_num_workers") != decided(on_h100, "/training/dataloader_num_workers")
    fast.check_same_decisions(small, on_h100)


def decided(plan: dict, path: str):
    return decisions.decided_values(plan)[path]


def test_only_documents_kept_apart_get_packing(tmp_path, recipe_file):
    wrapped = planned(tmp_path, recipe_file, training={"packing_strategy": "wrapped"})
    decision = decisions.decide(wrapped, H100)["/training/packing"]
    assert decision["value"] is False and "wrapped" in decision["reason"]
