"""Real SFT runs through TRL on the tiny Llama: each data format, full and LoRA.

Each test asserts what a user cares about: the weights (or only the adapter) changed, the loss
on the training examples fell, the output loads back with from_pretrained, the records exist.
"""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from assets import reverse_rows
from runner.train import models
from runner.errors import RecipeError
from runner.plan.build import build_plan
from runner.recipe.load import load_recipe
from runner.commands.run import prepare, run
from conftest import base_recipe, write_jsonl
from faults import interrupt_at

ROWS = reverse_rows(64, seed=3)
FORMATS = {
    "text": [{"text": f"{r['prompt']}{r['completion']}"} for r in ROWS],
    "prompt_completion": ROWS,
    "messages": [{"messages": [{"role": "user", "content": r["prompt"]},
                               {"role": "assistant", "content": r["completion"]}]} for r in ROWS],
}
# Enough steps at a high learning rate that the tiny model's loss falls far beyond noise.
LEARN = {"max_steps": 12, "learning_rate": 5e-3, "per_device_train_batch_size": 16, "eval_strategy": "no",
         "eval_on_start": True, "per_device_eval_batch_size": 64}


def train(tmp_path, recipe_file, fmt="text", **sections):
    write_jsonl(tmp_path / "train.jsonl", FORMATS[fmt])
    recipe = base_recipe(tmp_path, data={"format": fmt, "train": {"path": "train.jsonl"},
                                         "eval": {"path": "train.jsonl"}},
                         training=LEARN | sections.pop("training", {}), **sections)
    plan = build_plan(load_recipe(recipe_file(recipe)))
    return plan, run(plan, argv=["test"])


def eval_losses(manifest):
    return [h["eval_loss"] for h in manifest["history"] if "eval_loss" in h]


def initial_weights(plan):
    return models.load_model(plan["model"], plan["recipe"]["training"]["seed"]).state_dict()


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_full_fine_tuning_learns_saves_and_reloads(tmp_path, recipe_file, fmt):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    training = {"assistant_only_loss": True} if fmt == "messages" else {}
    plan, manifest = train(tmp_path, recipe_file, fmt, training=training)
    first, *_, last = eval_losses(manifest)
    assert last < 0.7 * first, (first, last)

    out = tmp_path / "run"
    saved = load_file(out / "model.safetensors")
    before = initial_weights(plan)
    changed = [k for k, v in saved.items() if not torch.equal(v, before[k])]
    assert len(changed) == len(saved), "every tensor trains in full fine-tuning"

    reloaded = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert torch.equal(reloaded.state_dict()["model.embed_tokens.weight"], saved["model.embed_tokens.weight"])
    assert tokenizer.eos_token == "<|end|>"

    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "finished" and record["metrics"]["after"]["loss"] == last
    assert record["versions"]["trl"] and record["hardware"]["world_size"] == 1
    assert record["parameters"]["trainable"] == record["parameters"]["total"] == plan["parameters"]["total"]
    assert json.loads((out / "recipe.json").read_text()) == plan["recipe"]


def test_lora_trains_only_the_adapter_and_reloads(tmp_path, recipe_file):
    from peft import AutoPeftModelForCausalLM

    plan, manifest = train(tmp_path, recipe_file, "prompt_completion",
                           peft={"method": "lora", "r": 8, "lora_alpha": 16, "lora_dropout": 0.0},
                           training={"learning_rate": 2e-2})
    first, *_, last = eval_losses(manifest)
    assert last < 0.9 * first, (first, last)

    out = tmp_path / "run"
    assert not (out / "model.safetensors").exists(), "only the adapter is saved"
    adapter = load_file(out / "adapter_model.safetensors")
    assert adapter and all("lora_" in k for k in adapter)
    assert any(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k), "lora_B starts at zero"
    assert manifest["parameters"]["trainable"] == plan["parameters"]["trainable"]
    assert manifest["parameters"]["total"] == plan["parameters"]["total"]

    # The random base was saved beside the adapter, so the adapter loads like any other.
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(out / "base_model")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.json", "run", "train.jsonl"], \
        "the random base is saved inside the run directory, nowhere else"
    reloaded = AutoPeftModelForCausalLM.from_pretrained(out)
    base_before = initial_weights(plan)
    base_after = reloaded.get_base_model().state_dict()
    key = "model.layers.0.self_attn.q_proj.base_layer.weight"
    assert torch.equal(base_after[key], base_before["model.layers.0.self_attn.q_proj.weight"]), "base frozen"


def test_eval_fraction_and_column_mapping(tmp_path, recipe_file):
    rows = [{"question": r["prompt"], "answer": r["completion"]} for r in ROWS]
    write_jsonl(tmp_path / "qa.jsonl", rows)
    recipe = base_recipe(tmp_path, data={"format": "prompt_completion", "train": {"path": "qa.jsonl"},
                                         "eval_fraction": 0.25,
                                         "columns": {"prompt": "question", "completion": "answer"}})
    manifest = run(build_plan(load_recipe(recipe_file(recipe))), argv=["test"])
    assert manifest["examples"] == {"train": 48, "eval": 16, "evaluation": 16}
    assert manifest["metrics"]["after"]["loss"] > 0


def test_missing_column_is_reported_before_the_model_loads(tmp_path, recipe_file):
    write_jsonl(tmp_path / "train.jsonl", [{"txt": "hello"}])
    plan = build_plan(load_recipe(recipe_file(base_recipe(tmp_path))))
    with pytest.raises(RecipeError) as info:
        run(plan, argv=["test"])
    (problem,) = info.value.problems
    assert problem.path == "/data/train"
    assert problem.message == f"no column 'text' for field 'text' (format 'text') in {tmp_path / 'train.jsonl'}; " \
                              "columns: txt"
    assert problem.hint == "did you mean 'txt'?"
    assert not (tmp_path / "run").exists(), "nothing is written for a run that cannot start"


def test_unreadable_data_file(tmp_path, recipe_file):
    (tmp_path / "train.jsonl").write_text('{"text": "ok"}\n{not json\n')
    plan = build_plan(load_recipe(recipe_file(base_recipe(tmp_path))))
    with pytest.raises(RecipeError) as info:
        run(plan, argv=["test"])
    assert info.value.problems[0].path == "/data/train/path"
    assert info.value.problems[0].message.startswith(f"line 2 of {tmp_path / 'train.jsonl'} is not one JSON object")


def test_existing_run_is_refused_then_replaced_with_overwrite(tmp_path, recipe_file):
    write_jsonl(tmp_path / "train.jsonl", FORMATS["text"])
    path = recipe_file(base_recipe(tmp_path))
    first = run(build_plan(load_recipe(path)), argv=["test"])
    (tmp_path / "run" / "metrics.json").write_text("the first run's")  # a file the first run wrote

    with pytest.raises(RecipeError) as info:
        run(build_plan(load_recipe(path)), argv=["test"])
    assert info.value.problems[0].path == "/output/dir"
    assert "already holds a run" in info.value.problems[0].message
    assert (tmp_path / "run" / "metrics.json").read_text() == "the first run's", "a refused run touches nothing"

    second = run(build_plan(load_recipe(path, ["output.if_exists=overwrite"])), argv=["test"])
    assert (tmp_path / "run" / "metrics.json").read_text() != "the first run's"
    assert not list((tmp_path / "run").glob(".replaced-*")), "the replaced run is removed once the new one succeeds"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.json", "run", "train.jsonl"], \
        "nothing is written outside the run directory"
    assert json.loads((tmp_path / "run" / "run.json").read_text())["started_at"] == second["started_at"]
    assert (tmp_path / "run" / "model.safetensors").is_file() and first["status"] == "finished"


def test_overwrite_that_cannot_start_keeps_the_earlier_run(tmp_path, recipe_file):
    write_jsonl(tmp_path / "train.jsonl", FORMATS["text"])
    path = recipe_file(base_recipe(tmp_path))
    run(build_plan(load_recipe(path)), argv=["test"])
    before = sorted(p.name for p in (tmp_path / "run").iterdir())
    # flash-attn is not installed (bitsandbytes now is, so an 8-bit optimizer no longer fails here)
    bad = ["output.if_exists=overwrite", "model.attn_implementation=flash_attention_2"]
    with pytest.raises(RecipeError) as info:
        run(build_plan(load_recipe(path, bad)), argv=["test"])
    assert info.value.problems[0].path == "/model/attn_implementation"
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == before


def test_overwrite_never_deletes_a_directory_the_runner_did_not_make(tmp_path, recipe_file):
    write_jsonl(tmp_path / "train.jsonl", FORMATS["text"])
    precious = tmp_path / "run" / "thesis.tex"
    precious.parent.mkdir()
    precious.write_text("years of work")
    plan = build_plan(load_recipe(recipe_file(base_recipe(tmp_path)), ["output.if_exists=overwrite"]))
    with pytest.raises(RecipeError) as info:
        run(plan, argv=["test"])
    assert "which the runner did not write" in info.value.problems[0].message
    assert precious.read_text() == "years of work"


def test_unreachable_hub_dataset_is_a_user_error(tmp_path, recipe_file):
    recipe = base_recipe(tmp_path, data={"train": {"hub": "no-such-org/no-such-dataset"}})
    plan = build_plan(load_recipe(recipe_file(recipe)))
    with pytest.raises(RecipeError) as info:
        run(plan, argv=["test"])
    (problem,) = info.value.problems
    assert problem.path == "/data/train/hub"
    assert problem.message.startswith("cannot load no-such-org/no-such-dataset")


@pytest.mark.parametrize("fmt, trained_text", [
    ("prompt_completion", [" ypvl<|end|>"]),
    ("messages", ["ypvl =<|end|>"]),
])
def test_loss_is_on_the_completion_or_the_assistant_turn_only(tmp_path, recipe_file, fmt, trained_text):
    """The labels the collator builds keep exactly the answer (and its end token); the prompt is masked."""
    rows = [{"prompt": "reverse lvpy =", "completion": " ypvl"}] if fmt == "prompt_completion" else \
        [{"messages": [{"role": "user", "content": "reverse lvpy"}, {"role": "assistant", "content": "ypvl ="}]}]
    write_jsonl(tmp_path / "train.jsonl", rows)
    plan = build_plan(load_recipe(recipe_file(base_recipe(tmp_path, data={"format": fmt}))))
    trainer = prepare(plan).trainer
    batch = trainer.data_collator([trainer.train_dataset[0]])
    labels = batch["labels"][0]
    trained = trainer.processing_class.decode(labels[labels != -100])
    assert [trained] == trained_text
    assert [p.name for p in (tmp_path / "run").iterdir()] == [".runner-claim"], \
        "prepare writes nothing but the claim on the run directory"


def test_chat_template_without_assistant_markers_trains_on_assistant_turns_only(tmp_path, recipe_file):
    """TRL refuses a template without {% generation %} markers it cannot patch; the runner masks it itself."""
    import shutil

    from conftest import TINY_MODEL

    model_dir = tmp_path / "plain-template"
    shutil.copytree(TINY_MODEL, model_dir)
    template = (model_dir / "chat_template.jinja").read_text()
    plain = template.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    assert plain != template
    (model_dir / "chat_template.jinja").write_text(plain)
    rows = [{"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "reverse ab"},
                          {"role": "assistant", "content": "ba"}, {"role": "user", "content": "reverse xyz"},
                          {"role": "assistant", "content": "zyx"}]}]
    write_jsonl(tmp_path / "train.jsonl", rows)
    recipe = base_recipe(tmp_path, data={"format": "messages"}, model={"name_or_path": str(model_dir)})
    trainer = prepare(build_plan(load_recipe(recipe_file(recipe)))).trainer
    labels = trainer.data_collator([trainer.train_dataset[0]])["labels"][0]
    trained = trainer.processing_class.decode(labels[labels != -100])
    assert trained == "ba<|end|>zyx<|end|>"
    assert trainer.args.assistant_only_loss is False  # TRL gets token ids and labels; its own masking stays off


def test_a_diverging_loss_stops_the_run_with_a_clear_message(tmp_path, recipe_file):
    write_jsonl(tmp_path / "train.jsonl", FORMATS["text"])
    recipe = base_recipe(tmp_path, training={"learning_rate": 1e6, "max_grad_norm": 0, "max_steps": 30,
                                             "logging_steps": 1, "save_strategy": "steps", "save_steps": 1})
    plan = build_plan(load_recipe(recipe_file(recipe)))
    assert plan["trainer"]["config"]["logging_nan_inf_filter"] is False
    with pytest.raises(RecipeError) as info:
        run(plan, argv=["test"])
    (problem,) = info.value.problems
    assert problem.path == "/training/learning_rate" and "the training loss became" in problem.message
    assert "lower learning_rate" in problem.hint
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["status"] == "failed"
    assert not (tmp_path / "run" / "model.safetensors").exists(), "diverged weights are not saved as the result"
    step = int(problem.message.split(" at step ")[1].split(";")[0])
    assert step < 30, "training stopped at the first non-finite loss"
    from runner.records.checkpoints import latest_complete_checkpoint

    good = latest_complete_checkpoint(tmp_path / "run")
    if good is not None:  # a checkpoint offered for resuming never holds diverged weights
        assert all(torch.isfinite(t).all() for t in load_file(good / "model.safetensors").values())
    assert str(good) in problem.message if good else "no good checkpoint" in problem.message


def test_secrets_never_reach_the_run_directory(tmp_path, recipe_file, monkeypatch):
    token, wandb_key = "hf_" + "Q" * 34, "wandbsecret0123456789"
    monkeypatch.setenv("HF_TOKEN", token)
    monkeypatch.setenv("WANDB_API_KEY", wandb_key)
    pasted = "sk-" + "z" * 40
    write_jsonl(tmp_path / "train.jsonl", FORMATS["text"])
    recipe = base_recipe(tmp_path, description=f"tried with {token} and {pasted} and {wandb_key}")
    run(build_plan(load_recipe(recipe_file(recipe))), argv=["python", "-m", "runner", f"--set=x={token}"])
    files = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert len(files) > 5
    for path in files:
        content = path.read_bytes()
        for secret in (token, wandb_key, pasted):
            assert secret.encode() not in content, (path, secret)


def test_pickled_weights_load_only_when_the_recipe_allows_them(tmp_path, recipe_file, capsys):
    from transformers import AutoConfig, AutoModelForCausalLM

    from conftest import TINY_MODEL

    pickled = tmp_path / "pickled"
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(TINY_MODEL))
    model.config.save_pretrained(pickled)
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")  # the old pickle format
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (pickled / name).write_bytes((TINY_MODEL / name).read_bytes())
    assert (pickled / "pytorch_model.bin").is_file() and not (pickled / "model.safetensors").exists()
    write_jsonl(tmp_path / "train.jsonl", FORMATS["text"])
    recipe = base_recipe(tmp_path, model={"name_or_path": str(pickled), "init": "pretrained"})
    with pytest.raises(RecipeError) as info:
        prepare(build_plan(load_recipe(recipe_file(recipe))))
    assert info.value.problems[0].path == "/model/name_or_path"
    allowed = ["model.allow_pickle_weights=true", "model.trust_remote_code=true"]
    prepare(build_plan(load_recipe(recipe_file(recipe), allowed)))
    assert f"trust_remote_code is on: Python code from {pickled} will run" in capsys.readouterr().err



def test_interrupted_run_resumes_to_the_same_weights_and_losses(tmp_path, recipe_file):
    """Ctrl-C mid-run saves a checkpoint and stops; --resume finishes with what an uninterrupted run gives."""
    from runner.train.resume import RunInterrupted

    write_jsonl(tmp_path / "train.jsonl", FORMATS["text"])
    training = {"max_steps": 8, "learning_rate": 5e-3, "per_device_train_batch_size": 8, "logging_steps": 1,
                "save_strategy": "no", "dataloader_num_workers": 0}
    straight = run(build_plan(load_recipe(recipe_file(base_recipe(tmp_path, training=training,
                                                                  output={"dir": str(tmp_path / "a")}), "a.json"))),
                   argv=["test"])

    path = recipe_file(base_recipe(tmp_path, training=training, output={"dir": str(tmp_path / "b")}), "b.json")
    prepared = prepare(build_plan(load_recipe(path)))
    prepared.trainer.add_callback(interrupt_at(3))
    from runner.commands.run import train
    with pytest.raises(RunInterrupted) as info:
        train(prepared.plan, prepared, ["test"])
    assert info.value.code == 130 and "--resume" in str(info.value)
    assert json.loads((tmp_path / "b" / "run.json").read_text())["status"] == "interrupted"
    assert sorted(p.name for p in (tmp_path / "b").glob("checkpoint-*")) == ["checkpoint-4"]

    with pytest.raises(RecipeError) as refused:  # a changed learning rate is not the same run
        run(build_plan(load_recipe(path, ["output.if_exists=resume", "training.learning_rate=1e-3"])), argv=["t"])
    assert [p.path for p in refused.value.problems] == ["/training/learning_rate"]

    resumed = run(build_plan(load_recipe(path, ["output.if_exists=resume", "training.logging_steps=1"])),
                  argv=["test"])
    losses = lambda m: [h["loss"] for h in m["history"] if "loss" in h]  # noqa: E731
    assert losses(resumed) == pytest.approx(losses(straight), abs=1e-5)
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_a_checkpoint_cut_short_is_skipped(tmp_path):
    from runner.records.checkpoints import COMPLETE, latest_complete_checkpoint

    for step, complete in ((2, True), (4, True), (6, False)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if complete:
            (folder / COMPLETE).write_text("{}")
    assert latest_complete_checkpoint(tmp_path).name == "checkpoint-4"


def test_resuming_a_finished_run_is_refused(tmp_path, recipe_file):
    write_jsonl(tmp_path / "train.jsonl", FORMATS["text"])
    path = recipe_file(base_recipe(tmp_path))
    run(build_plan(load_recipe(path)), argv=["test"])
    with pytest.raises(RecipeError) as info:
        run(build_plan(load_recipe(path, ["output.if_exists=resume"])), argv=["test"])
    assert "already finished" in info.value.problems[0].message


def test_out_of_memory_names_the_settings_that_reduce_memory(tmp_path, recipe_file):
    """A CPU cannot run out of GPU memory: a callback raises the error torch raises when a GPU does."""
    from transformers import TrainerCallback

    class Exhaust(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    write_jsonl(tmp_path / "train.jsonl", FORMATS["text"])
    prepared = prepare(build_plan(load_recipe(recipe_file(base_recipe(tmp_path, training={"max_steps": 5})))))
    prepared.trainer.add_callback(Exhaust())
    from runner.commands.run import train
    with pytest.raises(RecipeError) as info:
        train(prepared.plan, prepared, ["test"])
    (problem,) = info.value.problems
    assert problem.path == "/training/per_device_train_batch_size"
    assert problem.message.startswith("ran out of accelerator memory at step 2: CUDA out of memory")
    assert "activation_checkpointing" in problem.hint and "ZeRO" in problem.hint
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "failed"


def test_a_signal_after_the_last_step_still_completes_the_run(tmp_path, recipe_file):
    write_jsonl(tmp_path / "train.jsonl", FORMATS["text"])
    prepared = prepare(build_plan(load_recipe(recipe_file(base_recipe(tmp_path, training={"max_steps": 3})))))
    prepared.trainer.add_callback(interrupt_at(3))
    from runner.commands.run import train
    manifest = train(prepared.plan, prepared, ["test"])
    assert manifest["status"] == "finished" and (tmp_path / "run" / "model.safetensors").is_file()


def test_signal_handlers_are_restored_when_training_fails(tmp_path, recipe_file):
    import signal

    from transformers import TrainerCallback

    class Boom(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            raise RuntimeError("boom")

    before = signal.getsignal(signal.SIGINT)
    write_jsonl(tmp_path / "train.jsonl", FORMATS["text"])
    prepared = prepare(build_plan(load_recipe(recipe_file(base_recipe(tmp_path)))))
    prepared.trainer.add_callback(Boom())
    from runner.commands.run import train
    with pytest.raises(RuntimeError):
        train(prepared.plan, prepared, ["test"])
    assert signal.getsignal(signal.SIGINT) is before


def test_resume_compares_the_masked_recipe_and_notices_changed_data(tmp_path, recipe_file, monkeypatch):
    from runner.records.outputs import write_json
    from runner.records.checkpoints import COMPLETE
    from runner.train.resume import data_files, resume_point

    write_jsonl(tmp_path / "train.jsonl", FORMATS["text"])
    monkeypatch.setenv("TEAM_KEY_PREFIX", str(tmp_path))  # a "secret" that happens to be part of a path
    recipe = load_recipe(recipe_file(base_recipe(tmp_path))).to_dict()
    checkpoint = tmp_path / "run" / "checkpoint-2"
    write_json(checkpoint / COMPLETE, {"recipe": recipe, "data_files": data_files(recipe)})  # stored masked
    assert resume_point(tmp_path / "run", recipe) == checkpoint
    write_jsonl(tmp_path / "train.jsonl", FORMATS["text"][:10])
    with pytest.raises(RecipeError) as info:
        resume_point(tmp_path / "run", recipe)
    assert [p.path for p in info.value.problems] == ["/data/train/path"]
