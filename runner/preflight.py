"""Data preflight (`python -m runner check-data RECIPE`): what the data looks like to the trainer.

Errors (missing columns, empty splits, bad rows, labels outside the set) stop the run while the
data loads (`data.py`, `rows.py`); this adds the warnings: train/eval leakage, how many examples
`max_length` would truncate with token-length statistics, and one example shown as the model
will see it, with the tokens that carry loss marked. Only the tokenizer is loaded, never a model.
"""
from __future__ import annotations

import json
import statistics

from . import data, models

SHOW = 5  # duplicate rows named in a warning


def check_data(plan: dict) -> dict:
    splits, _ = data.load_all(plan)
    tokenizer = models.load_tokenizer(plan["model"])
    if plan["model"]["chat_template"]:
        with open(plan["model"]["chat_template"], encoding="utf-8") as handle:
            tokenizer.chat_template = handle.read()
    return inspect(plan, splits, tokenizer)


def inspect(plan: dict, splits, tokenizer, sample: int | None = None) -> dict:
    """The preflight report; token lengths from the first `sample` training rows (all when None)."""
    max_length = plan["trainer"]["config"].get("max_length") or plan["trainer"]["runner_settings"].get("max_length")
    rows = splits.train if sample is None else splits.train.select(range(min(sample, len(splits.train))))
    lengths = [len(encode(row, tokenizer)[0]) for row in rows]
    report = {
        "examples": {name: len(getattr(splits, name)) for name in ("train", "eval", "evaluation", "retention")
                     if getattr(splits, name) is not None},
        "token_lengths": length_stats(lengths),
        "max_length": max_length,
        "measured_rows": len(lengths),
        "truncated": sum(n > max_length for n in lengths) if max_length else 0,
        "leakage": leakage(splits.train, splits.eval),
        "preview": preview(splits.train[0], tokenizer),
    }
    report["warnings"] = warnings(report)
    return report


def encode(row: dict, tokenizer) -> tuple[list[int], list[int]]:
    """(token ids, 1 where the token is trained on) for one canonical row, as the trainers build it."""
    if "messages" in row:
        out = tokenizer.apply_chat_template(row["messages"], tokenize=True, return_dict=True,
                                            return_assistant_tokens_mask=True)
        mask = out.get("assistant_masks") or [1] * len(out["input_ids"])
        return out["input_ids"], mask
    if "completion" in row or "chosen" in row:
        prompt = _render(row.get("prompt") or "", tokenizer, generation_prompt=True)
        answer = _render(row.get("completion") or row.get("chosen"), tokenizer, generation_prompt=False)
        prompt_ids = tokenizer(prompt)["input_ids"] if prompt else []
        answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        return prompt_ids + answer_ids, [0] * len(prompt_ids) + [1] * len(answer_ids)
    ids = tokenizer(row["text"], row.get("text_pair"))["input_ids"]
    if "label" not in row:  # language modelling: TRL appends the end token
        ids = ids + [tokenizer.eos_token_id]
    return ids, [1] * len(ids)


def _render(value, tokenizer, generation_prompt: bool) -> str:
    if isinstance(value, list):  # conversational turns
        return tokenizer.apply_chat_template(value, tokenize=False, add_generation_prompt=generation_prompt)
    return value


def length_stats(lengths: list[int]) -> dict:
    ordered = sorted(lengths)
    p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
    return {"min": ordered[0], "median": statistics.median(ordered), "p95": p95, "max": ordered[-1]}


def leakage(train, held_out) -> dict | None:
    """Evaluation rows that also appear in the training data: they inflate every metric."""
    if held_out is None:
        return None
    seen = {_key(row): i for i, row in enumerate(train, start=1)}
    both = [(i, seen[_key(row)]) for i, row in enumerate(held_out, start=1) if _key(row) in seen]
    return {"count": len(both), "eval_rows": [i for i, _ in both[:SHOW]], "train_rows": [j for _, j in both[:SHOW]]}


def _key(row: dict) -> str:
    return json.dumps(row, sort_keys=True, ensure_ascii=False)


def preview(row: dict, tokenizer) -> str:
    """The first example as the model sees it; text in ⟦ ⟧ carries no loss."""
    ids, mask = encode(row, tokenizer)
    parts, start = [], 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or mask[i] != mask[start]:
            text = tokenizer.decode(ids[start:i])
            parts.append(text if mask[start] else f"⟦{text}⟧")
            start = i
    return "".join(parts)


def warnings(report: dict) -> list[str]:
    found = []
    if report["truncated"]:
        share = report["truncated"] / report["measured_rows"]
        found.append(f"{report['truncated']} of {report['measured_rows']} training examples measured ({share:.1%}) "
                     f"are longer than max_length {report['max_length']} and will be truncated")
    if report["leakage"] and report["leakage"]["count"]:
        leak = report["leakage"]
        found.append(f"{leak['count']} evaluation rows also appear in the training data (eval rows "
                     f"{leak['eval_rows']}, train rows {leak['train_rows']}): metrics on them are inflated")
    return found


def render(report: dict) -> str:
    stats = report["token_lengths"]
    lines = [f"examples: {', '.join(f'{k} {v}' for k, v in report['examples'].items())}",
             f"training tokens per example: min {stats['min']}, median {stats['median']}, p95 {stats['p95']}, "
             f"max {stats['max']} (max_length {report['max_length']})",
             "first training example (text in ⟦ ⟧ carries no loss):", "  " + report["preview"].replace("\n", "\n  ")]
    lines += [f"warning: {w}" for w in report["warnings"]] or ["no warnings"]
    return "\n".join(lines)
