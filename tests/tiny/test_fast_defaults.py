"""Fast defaults at launch: the CPU probe through torch, a CPU run's recorded decisions, and the varlen attention path."""
import json

import pytest
import torch

from runner.train import attention

from runner.launch import machine
from runner.launch import cpu
from runner.launch import decide as fast
from runner.plan import decisions
from runner.plan import build as plan_module
from runner.recipe.load import load_recipe

from conftest import base_recipe, load_bench, write_jsonl
from machines import H100


def planned(tmp_path, recipe_file, **sections):
    write_jsonl(tmp_path / "train.jsonl", [{"text": f"row {i} says hello"} for i in range(16)])
    return plan_module.build_plan(load_recipe(str(recipe_file(base_recipe(tmp_path, **sections)))))


def test_without_cpu_flags_torch_is_asked(monkeypatch, tmp_path):
    monkeypatch.setattr(cpu, "CPUINFO", tmp_path / "no-cpuinfo")  # macOS, Windows: no /proc/cpuinfo
    found = cpu.probe()
    assert found["source"] == "torch.cpu.get_capabilities()"
    assert found["native"] == any(torch.cpu.get_capabilities().get(f) is True for f in cpu.NATIVE_BF16)


def test_a_cpu_run_records_its_decisions(tmp_path, recipe_file):
    from runner.commands import run

    plan = planned(tmp_path, recipe_file, training={"max_steps": 2, "save_strategy": "no"})
    run.run(plan, argv=["test"])
    saved = json.loads((tmp_path / "run" / "plan.json").read_text())
    settings = saved["fast_defaults"]["settings"]
    assert settings["/training/optim"]["value"] == "adamw_torch" and settings["/training/packing"]["value"] is False
    assert saved["trainer"]["config"]["activation_checkpointing"] is False and saved["model"]["dtype"] == "auto"
    # precision: what this CPU's flags call for (either way), the flag read, and what the trainer really ran
    here = cpu.probe()
    bf16 = settings["/training/bf16"]
    assert bf16["value"] is here["native"] and saved["trainer"]["config"]["bf16"] is here["native"]
    assert (f"{here['feature']} in {here['source']}" if here["native"] else "no native bf16") in bf16["reason"]
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["hardware"]["cpu_bf16"] == here and record["trainer_config"]["bf16"] is here["native"]
    assert record["mixed_precision"] == ("bf16" if here["native"] else "no")


# --- the varlen attention ------------------------------------------------------------------------


VARLEN_BENCH = load_bench("varlen_check")  # the same models and packed rows the GPU check uses

packed_models, packed_batch = VARLEN_BENCH.packed_models, VARLEN_BENCH.packed_batch


def test_packed_documents_do_not_see_each_other_on_cpu():
    varlen, reference = packed_models()
    docs, batch = packed_batch([7, 12, 3])
    with torch.no_grad():
        packed = varlen(**batch, use_cache=False).logits[0]
        alone = torch.cat([reference(input_ids=d[None], use_cache=False).logits[0] for d in docs])
        cached = varlen(**batch).logits[0]  # eval mode makes a KV cache: transformers then skips its packing check
        plain = varlen(input_ids=batch["input_ids"], use_cache=False).logits[0]  # one long causal sequence
    assert torch.allclose(packed, alone, atol=1e-5) and torch.allclose(cached, alone, atol=1e-5)
    assert not torch.allclose(plain[7:], alone[7:], atol=1e-3)  # the test can see a leak


def test_padded_batches_take_the_sdpa_path():
    varlen, reference = packed_models()
    ids = torch.randint(0, 200, (2, 9))
    mask = torch.tensor([[1] * 9, [0] * 4 + [1] * 5])
    with torch.no_grad():
        assert torch.allclose(varlen(input_ids=ids, attention_mask=mask).logits,
                              reference(input_ids=ids, attention_mask=mask).logits, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the varlen flash kernel needs a CUDA GPU")
def test_varlen_kernel_matches_per_document_sdpa_on_gpu():
    assert machine.kernel_available()
    found = VARLEN_BENCH.model_check()  # 4 documents in one padding-free row vs each alone, bf16
    assert found["max_abs_diff_vs_per_document"] < 0.05 and found["grad_nonzero"]


def test_flash_dtype_turns_fp32_inputs_into_the_autocast_half_dtype():
    # A QLoRA base after k-bit preparation keeps its norms in fp32, so q/k/v arrive in fp32; the kernel
    # takes only fp16/bf16 (seen on the H100: "FlashAttention only support fp16 and bf16 data type").
    fp32 = torch.zeros(2, 2)
    assert attention.flash_dtype(fp32) == torch.bfloat16
    assert attention.flash_dtype(fp32.half()) == torch.float16
    with torch.autocast("cpu", dtype=torch.float16):
        assert attention.flash_dtype(fp32) == torch.float16


def test_a_4bit_base_keeps_its_compute_dtype_and_no_worker_persists(tmp_path, recipe_file):
    plan = planned(tmp_path, recipe_file, peft={"method": "lora"},
                   model={"quantization": {"method": "bnb_4bit", "bnb_4bit_compute_dtype": "float16"}})
    decided = decisions.decide(plan, H100)
    assert decided["/model/dtype"]["value"] == "float16"
    # persistent workers would make transformers reuse one cached eval dataloader for every eval dataset
    from trl import SFTConfig

    from runner.train.trainer import launch_config

    config = launch_config(fast.apply(plan, decided), {"gpus": [], "bf16": False})
    assert config["dataloader_num_workers"] == 4
    assert SFTConfig(**{**config, "use_cpu": True, "output_dir": str(tmp_path / "out")}).dataloader_persistent_workers is False
