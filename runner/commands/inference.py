"""Use a finished run: evaluate it again (`eval`) or look at what it does with new inputs (`predict`).

`predict` also takes a whole checkpoint of a run (RUN_DIR/checkpoint-N), e.g. of an interrupted run:
its weights and tokenizer are in the checkpoint, the plan and records in the run directory above it.
"""
from __future__ import annotations

import copy
import dataclasses
import json
from datetime import datetime, timezone
from pathlib import Path

from runner.data import load as data
from runner.evaluate import measure as evaluation
from runner.launch import decide as fast
from runner.train import models
from runner.launch import machine
from runner.records import outputs
from runner.train import resume
from runner.errors import Problem, RecipeError
from runner.commands.run import with_runner_settings
from runner.plan.tasks import import_dotted
from runner.train.trainer import build_trainer


def load_trained(run_dir: Path, plan: dict, config_updates: dict | None = None):
    """The run's model: a saved full model, or the saved adapter on the base it names."""
    adapter = run_dir / "adapter_config.json"
    if not adapter.is_file() and not (run_dir / "config.json").is_file():
        raise RecipeError([Problem("--model", f"{run_dir} holds no saved model (no config.json or adapter_config.json)",
                                   "point at the run directory of a finished run")])
    if not adapter.is_file():  # saved as safetensors, also when trained from a GGUF file
        spec = {**plan["model"], "name_or_path": str(run_dir), "init": "pretrained", "config_overrides": {},
                "gguf_file": None}
        return models.load_model(spec, plan["recipe"]["training"]["seed"])
    from peft import PeftModel

    base = json.loads(adapter.read_text())["base_model_name_or_path"]
    if config_updates is None and (run_dir / outputs.MANIFEST).is_file():  # e.g. the label map of a classifier
        config_updates = json.loads((run_dir / outputs.MANIFEST).read_text()).get("config_updates")
    if config_updates and "id2label" in config_updates:  # JSON made the ids strings
        config_updates = {**config_updates, "id2label": {int(k): v for k, v in config_updates["id2label"].items()}}
    recipe_base = base == plan["model"]["name_or_path"]  # not a random base kept in the run directory
    # peft records only the base's directory or Hub id: a GGUF file in it is named by the plan (plan.json)
    spec = {**plan["model"], "name_or_path": base, "init": "pretrained",
            "config_overrides": plan["model"]["config_overrides"] if recipe_base else {},
            "gguf_file": plan["model"].get("gguf_file") if recipe_base else None}
    model = models.load_model(spec, plan["recipe"]["training"]["seed"], config_updates)
    return PeftModel.from_pretrained(model, run_dir)


def saved_tokenizer(plan: dict, run_dir: Path, where: str):
    """The tokenizer saved with the run (its chat template included), not the recipe's source."""
    return models.load_tokenizer({**plan["model"], "tokenizer": str(run_dir), "tokenizer_revision": "main",
                                  "tokenizer_key": where, "chat_template": None, "tokenizer_gguf_file": None})


def for_trained_model(plan: dict, run_dir: Path) -> dict:
    """The plan, adjusted to evaluate an already trained model: no new adapter, outputs in its run directory."""
    adjusted = copy.deepcopy(plan)
    adjusted["peft"] = None
    adjusted["trainer"]["config"]["output_dir"] = str(run_dir)
    if adjusted["trainer"]["reference_model"] is not None:
        # The reference is the recipe's start model, reloaded: a copy of the trained model, the trained
        # adapter switched off by TRL's "ref" adapter copy, or log-probs precomputed now would all
        # measure the trained model against itself.
        adjusted["trainer"]["reference_model"] = "initial"
    return adjusted


def check_same_run(plan: dict, run_dir: Path) -> None:
    """The recipe must describe the run it evaluates: same task, data format and tuning method."""
    saved = run_dir / "plan.json"
    if not saved.is_file():
        raise RecipeError([Problem("--model", f"{run_dir} has no plan.json: not a run directory")])
    trained = json.loads(saved.read_text())
    pairs = {"/task": (trained["task"], plan["task"]), "/data/format": (trained["data"]["format"], plan["data"]["format"]),
             "/peft/method": ((trained["peft"] or {}).get("method", "none"), (plan["peft"] or {}).get("method", "none"))}
    problems = [Problem(path, f"is {mine!r} here but the run in {run_dir} was trained with {theirs!r}",
                        "evaluate with the recipe the run was trained from (its recipe.json)")
                for path, (theirs, mine) in pairs.items() if theirs != mine]
    if problems:
        raise RecipeError(problems)


def evaluate_run(plan: dict, run_dir: Path) -> dict:
    """The plan's metrics for the model saved in `run_dir`; written to run_dir/eval-<time>.json."""
    from accelerate import PartialState

    if not plan["evaluation"]["metrics"] and plan["evaluation"]["retention"] is None:
        raise RecipeError([Problem("/evaluation", "nothing to evaluate: the recipe has no evaluation data",
                                   "add data.eval, data.eval_fraction or evaluation.data (e.g. with --set)")])
    check_same_run(plan, run_dir)
    manifest_file = run_dir / outputs.MANIFEST
    check_finished(run_dir, json.loads(manifest_file.read_text()) if manifest_file.is_file() else {}, "--model",
                   suggest_checkpoint=False)
    hw = machine.hardware()
    state = PartialState(cpu=not hw["gpus"])
    plan = fast.resolve(plan, hw, show=False)
    splits, derived = data.load_all(plan)
    plan = with_runner_settings(plan, derived["settings"])
    updates = derived["config"]
    tokenizer = saved_tokenizer(plan, run_dir, "--model")
    model = load_trained(run_dir, plan, updates)
    adjusted = for_trained_model(plan, run_dir)
    # Trainers insist on training data; the (small) evaluation rows stand in, so the real training set
    # is not tokenized for nothing. It was read only for the label map.
    splits = dataclasses.replace(splits, train=splits.evaluation or splits.retention)
    trainer = build_trainer(adjusted, model, tokenizer, splits, hw)
    results = {"model": str(run_dir), "recipe_file": plan["recipe_file"], "evaluated_at": outputs.now(),
               "after": evaluation.measure(trainer, adjusted, splits),
               "retention": evaluation.measure_retention(trainer, splits)}
    if state.is_main_process:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")
        outputs.write_json(run_dir / f"eval-{stamp}.json", results)  # never replaces an earlier evaluation
    return results


def predict(run_dir: Path, texts: list[str], max_new_tokens: int | None = None) -> list[dict]:
    """What the run's model makes of each text: generated text, or a label with class probabilities.

    `run_dir`: a finished run's directory, or one whole checkpoint of a run (RUN_DIR/checkpoint-N)."""
    records = records_dir(run_dir)
    plan_file = records / "plan.json"
    if not plan_file.is_file():
        raise RecipeError([Problem("RUN_DIR", f"{run_dir} has no plan.json: not a run directory")])
    plan = json.loads(plan_file.read_text())
    manifest = json.loads((records / outputs.MANIFEST).read_text()) if (records / outputs.MANIFEST).is_file() else {}
    if records == run_dir:
        check_finished(run_dir, manifest, "RUN_DIR", suggest_checkpoint=True)
    else:
        check_whole(run_dir)
    plan["data_shape"] = manifest.get("data_shape") or {"conversational": False}
    tokenizer = saved_tokenizer(plan, run_dir, "RUN_DIR")
    model = load_trained(run_dir, plan, manifest.get("config_updates"))
    settings = dict(plan["evaluation"]["generation"])
    if max_new_tokens is not None:
        settings["max_new_tokens"] = max_new_tokens
    return import_dotted(plan["predict"])(model, tokenizer, plan, texts, settings)


def records_dir(model_dir: Path) -> Path:
    """The directory with the run's plan.json and run.json: `model_dir` itself, or the run of a checkpoint."""
    name = model_dir.name
    if name.startswith("checkpoint-") and name[11:].isdigit() and (model_dir.parent / "plan.json").is_file():
        return model_dir.parent
    return model_dir


def check_whole(checkpoint: Path) -> None:
    """A checkpoint is used only when its files are those its marker lists (see resume.damage)."""
    problems = resume.damage(checkpoint)
    if problems:
        raise RecipeError([Problem("RUN_DIR", f"{checkpoint} is damaged: {'; '.join(problems)}",
                                   "use another checkpoint of the run (its files are left as they are)")])


def check_finished(run_dir: Path, manifest: dict, where: str, suggest_checkpoint: bool) -> None:
    """A run that stopped before saving its model (interrupted, failed, killed) is named as such, with its newest
    whole checkpoint and how to go on, instead of failing on the missing files (a tokenizer error first)."""
    saved = (run_dir / "config.json").is_file() or (run_dir / "adapter_config.json").is_file()
    status = manifest.get("status")
    if saved or status in (None, "finished"):
        return  # a finished run without its model is load_trained's error
    checkpoint, _ = resume.whole_checkpoint(run_dir)
    command = f"python -m runner {manifest.get('recipe_file') or 'RECIPE'}"
    resume_it = manifest.get("resume_command") or f"{command} --resume"  # run.json's own, where the run wrote one
    # the same command (every --set, so the same output.dir) starting over; never the recipe's bare default
    again = resume_it.removesuffix(" --resume") + " --overwrite" if manifest.get("resume_command") else \
        f"{command} --set output.dir={run_dir} --overwrite"
    why = f"{run_dir} holds no trained model: the run did not finish (run.json status '{status}'" + \
        (": still training, or killed before it could record why)" if status == "running" else ")")
    kept = sorted(run_dir.glob(".replaced-*"))
    if kept:  # an --overwrite that did not finish: the run it was replacing is still there, whole
        why += (f"; it was replacing an earlier run, which is kept in {kept[-1]} (an --overwrite deletes it "
                f"once a new run finishes: to keep it, move it out first, e.g. mv {kept[-1]} {run_dir}-earlier)")
    if checkpoint is None:
        raise RecipeError([Problem(where, f"{why} and has no whole checkpoint",
                                   f"train it again: {again}")])
    marker, _ = resume.read_marker(checkpoint)
    also = f"; or predict with the checkpoint as it is: python -m runner predict {checkpoint}" \
        if suggest_checkpoint else ""
    raise RecipeError([Problem(where, f"{why}; its newest whole checkpoint is {checkpoint.name} "
                                      f"({resume.progress(marker, checkpoint)})",
                               f"finish the run with: {resume_it}{also}")])


def generate_texts(model, tokenizer, plan: dict, texts: list[str], settings: dict) -> list[dict]:
    """Chat formats send each text as a user turn through the chat template; others continue the raw text."""
    if plan["data_shape"]["conversational"]:
        prompts = [tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=True,
                                                 add_generation_prompt=True, return_dict=True)["input_ids"]
                   for t in texts]
    else:
        prompts = [tokenizer(t)["input_ids"] for t in texts]
    answers = evaluation.generate(model, tokenizer, prompts, settings)
    return [{"input": t, "output": a} for t, a in zip(texts, answers)]


def classify_texts(model, tokenizer, plan: dict, texts: list[str], settings: dict) -> list[dict]:
    import torch

    max_length = plan["trainer"]["runner_settings"]["max_length"]
    results = []
    model.eval()
    for text in texts:
        batch = tokenizer(text, truncation=True, max_length=max_length, return_tensors="pt").to(model.device)
        with torch.no_grad():
            probs = model(**batch).logits.softmax(-1)[0].tolist()
        names = model.config.id2label
        best = max(range(len(probs)), key=probs.__getitem__)
        results.append({"input": text, "label": names[best],
                        "scores": {names[i]: round(p, 6) for i, p in enumerate(probs)}})
    return results


def read_inputs(path: Path) -> list[str]:
    """Texts from a .txt file (one per line) or a .jsonl file (a `text` or `prompt` field per line)."""
    if not path.is_file():
        raise RecipeError([Problem("--input", f"file not found: {path}")])
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if path.suffix != ".jsonl":
        return lines
    texts = []
    for number, line in enumerate(lines, start=1):
        try:
            row = json.loads(line)
            texts.append(row["text"] if "text" in row else row["prompt"])
        except (json.JSONDecodeError, KeyError, TypeError):
            raise RecipeError([Problem("--input", f"{path} line {number}: expected a JSON object with a "
                                                  "'text' or 'prompt' field")]) from None
    return texts
