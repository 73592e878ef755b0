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
from .errors import Problem, RecipeError

SHOW = 5  # duplicate rows named in a warning


def check_data(plan: dict) -> dict:
    splits, _ = data.load_all(plan)
    tokenizer = models.load_tokenizer(plan["model"])
    require_chat_template(splits, tokenizer)
    return inspect(plan, splits, tokenizer)


def require_chat_template(splits, tokenizer) -> None:
    """Conversations need a chat template to become text; without one, say so before anything else fails."""
    from trl.data_utils import is_conversational

    if tokenizer.chat_template is None and is_conversational(splits.train[0]):
        raise RecipeError([Problem("/model/chat_template", "the data are conversations but the tokenizer has no "
                                   "chat template", "name a Jinja template file in model.chat_template")])


def inspect(plan: dict, splits, tokenizer, sample: int | None = None) -> dict:
    """The preflight report; token lengths from the first `sample` training rows (all when None)."""
    max_length = plan["trainer"]["config"].get("max_length") or plan["trainer"]["runner_settings"].get("max_length")
    rows = splits.train if sample is None else splits.train.select(range(min(sample, len(splits.train))))
    config = plan["trainer"]["config"]
    lengths = token_lengths(rows, tokenizer, config)
    packing = bool(config.get("packing"))  # packed rows are cut to max_length as a whole, not per example
    report = {
        "examples": {name: len(getattr(splits, name)) for name in ("train", "eval", "evaluation", "retention")
                     if getattr(splits, name) is not None},
        "token_lengths": length_stats(lengths),
        "max_length": max_length,
        "measured_rows": len(lengths),
        "truncated": sum(n > max_length for n in lengths) if max_length and not packing else 0,
        "leakage": leakage(splits.train, splits.eval),
        "preview": preview(splits.train[0], tokenizer, config),
    }
    report["warnings"] = warnings(report)
    return report


def encode(row: dict, tokenizer, config: dict) -> tuple[list[int], list[int]]:
    """(token ids, 1 where the token is trained on) for one canonical row, built the way TRL builds it.

    `config` is the trainer config of the plan: its loss flags decide the mask.
    """
    if "messages" in row:
        out = tokenizer.apply_chat_template(row["messages"], tokenize=True, return_dict=True,
                                            return_assistant_tokens_mask=True)
        ids = out["input_ids"]
        trained = out.get("assistant_masks") if config.get("assistant_only_loss") else None
        return ids, trained or [1] * len(ids)
    if "completion" in row or "chosen" in row:
        answers = [row["completion"]] if "completion" in row else [row["chosen"], row["rejected"]]
        ids, prompt_length = max((_with_prompt(row.get("prompt"), a, tokenizer) for a in answers),
                                 key=lambda pair: len(pair[0]))  # DPO: the longer of chosen and rejected
        only_answer = config.get("completion_only_loss", True) is not False
        return ids, [0 if only_answer and i < prompt_length else 1 for i in range(len(ids))]
    ids = tokenizer(row["text"], row.get("text_pair"))["input_ids"]
    if "label" not in row and (not ids or ids[-1] != tokenizer.eos_token_id):
        ids = ids + [tokenizer.eos_token_id]  # language modelling: TRL appends the end token
    return ids, [1] * len(ids)


def token_lengths(rows, tokenizer, config: dict) -> list[int]:
    """len(encode(row)[0]) for every row; rows of plain strings are tokenized as one batch (the fast tokenizer
    splits a batch across threads: ~10x faster for the 2,000 rows measured before every run)."""
    rows = list(rows)
    first = rows[0] if rows else {}
    plain = all(isinstance(first.get(k), str) for k in first if k in ("prompt", "completion", "chosen", "rejected", "text"))
    if not rows or "messages" in first or not plain or "text_pair" in first:
        return [len(encode(row, tokenizer, config)[0]) for row in rows]
    if "text" in first:
        texts, lm = [row["text"] for row in rows], "label" not in first
        return [_with_eos(ids, tokenizer) if lm else len(ids) for ids in tokenizer(texts)["input_ids"]]
    answers = ("completion",) if "completion" in first else ("chosen", "rejected")
    longest = [0] * len(rows)
    for answer in answers:  # DPO: the longer of chosen and rejected, as encode() takes
        full = tokenizer([(row.get("prompt") or "") + row[answer] for row in rows])["input_ids"]
        longest = [max(n, _with_eos(ids, tokenizer)) for n, ids in zip(longest, full)]
    return longest


def _with_eos(ids: list[int], tokenizer) -> int:
    return len(ids) + (not ids or ids[-1] != tokenizer.eos_token_id)


def _with_prompt(prompt, answer, tokenizer) -> tuple[list[int], int]:
    """(prompt + answer ids, prompt length): the whole tokenized at once, as TRL does, then split."""
    if isinstance(answer, list):  # conversational
        turns = prompt or []
        head = tokenizer.apply_chat_template(turns, tokenize=True, add_generation_prompt=True,
                                             return_dict=True)["input_ids"] if turns else []
        full = tokenizer.apply_chat_template(turns + answer, tokenize=True, return_dict=True)["input_ids"]
        return full, len(head)
    prompt = prompt or ""
    head = tokenizer(prompt)["input_ids"] if prompt else []
    full = tokenizer(prompt + answer)["input_ids"]
    if not full or full[-1] != tokenizer.eos_token_id:
        full = full + [tokenizer.eos_token_id]
    return full, len(head)


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


def preview(row: dict, tokenizer, config: dict) -> str:
    """The first example as the model sees it; text in ⟦ ⟧ carries no loss."""
    ids, mask = encode(row, tokenizer, config)
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
