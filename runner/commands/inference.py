"""Use a finished run: evaluate it again (`eval`) or look at what it does with new inputs (`predict`).

`predict` also takes a whole checkpoint of a run (RUN_DIR/checkpoint-N), e.g. of an interrupted run:
its weights and tokenizer are in the checkpoint, the plan and records in the run directory above it.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from runner.commands.finished import (check_finished, check_same_run, check_whole, load_trained, read_plan,
                                      records_dir, saved_tokenizer)
from runner.evaluate import measure as evaluation
from runner.evaluate.generation import generate
from runner.records import outputs
from runner.errors import Problem, RecipeError
from runner.train import session
from runner.train.reward import score_texts
from runner.train.trainer import launch_config


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
    plan, hardware = session.for_this_machine(plan)
    state = PartialState(cpu=launch_config(plan, hardware)["use_cpu"])  # the use_cpu decision
    plan, splits, updates = session.load_data(plan)
    tokenizer = saved_tokenizer(plan, run_dir, "--model")
    model = load_trained(run_dir, plan, updates)
    adjusted, splits, trainer = session.measuring_trainer(plan, run_dir, model, tokenizer, splits, hardware)
    results = {"model": str(run_dir), "recipe_file": plan["recipe_file"], "evaluated_at": outputs.now(),
               "after": evaluation.measure(trainer, adjusted, splits),
               "retention": evaluation.measure_retention(trainer, splits)}
    if state.is_main_process:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")
        outputs.write_json(run_dir / f"eval-{stamp}.json", results)  # never replaces an earlier evaluation
    return results


def predict(run_dir: Path, texts: list[str], max_new_tokens: int | None = None) -> list[dict]:
    """What the run's model makes of each text: generated text, a label with class probabilities, or a score.

    `run_dir`: a finished run's directory, or one whole checkpoint of a run (RUN_DIR/checkpoint-N)."""
    records = records_dir(run_dir)
    plan = read_plan(records, "RUN_DIR")
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
    return PREDICT[plan["task"]](model, tokenizer, plan, texts, settings)


def generate_texts(model, tokenizer, plan: dict, texts: list[str], settings: dict) -> list[dict]:
    """Chat formats send each text as a user turn through the chat template; others continue the raw text."""
    if plan["data_shape"]["conversational"]:
        prompts = [tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=True,
                                                 add_generation_prompt=True, return_dict=True)["input_ids"]
                   for t in texts]
    else:
        prompts = [tokenizer(t)["input_ids"] for t in texts]
    answers = generate(model, tokenizer, prompts, settings)
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


# Task -> function(model, tokenizer, plan, texts, generation settings) -> one result dict per text.
PREDICT = {"sft": generate_texts, "pretrain": generate_texts, "dpo": generate_texts, "kto": generate_texts,
           "grpo": generate_texts, "rloo": generate_texts, "distill": generate_texts,
           "classification": classify_texts, "reward": score_texts}


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
