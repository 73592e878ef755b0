"""Data preflight (`python -m runner check-data RECIPE`): what the data looks like to the trainer.

Errors (missing columns, empty splits, bad rows, labels outside the set) stop the run while the
data loads (`data.py`, `rows.py`); this adds the warnings: train/eval leakage, how many examples
`max_length` would truncate with token-length statistics, and one example shown as the model
will see it, with the tokens that carry loss marked. Only the tokenizer is loaded, never a model.
"""
from __future__ import annotations

import json
import statistics

from . import chat_masks, data, models
from .errors import Problem, RecipeError
from .tasks import TASKS

SHOW = 5  # duplicate rows named in a warning


def check_data(plan: dict) -> dict:
    splits, _ = data.load_all(plan)
    tokenizer = models.load_tokenizer(plan["model"])
    check_chat_template(plan, splits, tokenizer)
    return inspect(plan, splits, tokenizer)


def check_chat_template(plan: dict, splits, tokenizer) -> None:
    """Conversations need a chat template, and one whose assistant turns the runner can mask when the loss is
    on them: said before any weights load, with the fix."""
    from trl.data_utils import is_conversational

    row = splits.train[0]
    if tokenizer.chat_template is None and is_conversational(row):
        raise RecipeError([Problem("/model/chat_template", "the data are conversations but the tokenizer has no "
                                   "chat template", "name a Jinja template file in model.chat_template")])
    if chat_masks.masked_by_runner(row, chat_masks.loss_options(plan)):
        problems = chat_masks.template_problems(tokenizer)
        if problems:
            raise RecipeError(problems)


def inspect(plan: dict, splits, tokenizer, sample: int | None = None) -> dict:
    """The preflight report; token lengths and loss tokens from the first `sample` training rows (all when None).

    Raises when training would train on nothing: no measured token carries loss, or truncation would cut the
    whole answer out of more than DROPPED_SHARE of the examples (TRL drops such examples).
    """
    config = chat_masks.loss_options(plan)
    token_loss = TASKS[plan["task"]].causal_lm
    max_length = config.get("max_length")
    rows = splits.train if sample is None else splits.train.select(range(min(sample, len(splits.train))))
    masks = token_masks(rows, tokenizer, config)
    lengths = [len(mask) for mask in masks]
    cut = max_length if max_length and truncates_each_example(config) else None
    report = {
        "examples": {name: len(getattr(splits, name)) for name in ("train", "eval", "evaluation", "retention")
                     if getattr(splits, name) is not None},
        "token_lengths": length_stats(lengths),
        "max_length": max_length,
        "measured_rows": len(lengths),
        "truncated": sum(n > cut for n in lengths) if cut else 0,
        "loss_tokens": loss_tokens(masks, cut) if token_loss else None,
        "leakage": leakage(splits.train, splits.eval),
        "preview": preview(splits.train[0], tokenizer, config),
    }
    if token_loss:
        refuse_training_on_nothing(report)
    report["warnings"] = warnings(report)
    return report


def truncates_each_example(config: dict) -> bool:
    """TRL cuts each example to max_length unless packing splits or wraps it (bfd packing truncates too)."""
    return not config.get("packing") or config.get("packing_strategy", "bfd") == "bfd"


DROPPED_SHARE = 0.1  # more examples than this losing their whole answer to truncation stops the run


def refuse_training_on_nothing(report: dict) -> None:
    loss, measured = report["loss_tokens"], report["measured_rows"]
    fix = "raise training.max_length, or shorten or remove those examples (TRL keeps the start of each example)"
    if loss["kept"] == 0:
        cause = f" once truncated to max_length {report['max_length']}" if loss["all"] else ""
        raise RecipeError([Problem("/data/train", f"no token of the {measured} examples measured carries loss{cause}: "
                                   "training would learn nothing", fix if loss["all"] else
                                   "check data.format and the loss options (assistant_only_loss, completion_only_loss)")])
    if loss["dropped"] > DROPPED_SHARE * measured:
        raise RecipeError([Problem("/training/max_length", f"{loss['dropped']} of {measured} examples measured "
                                   f"({loss['dropped'] / measured:.0%}) would lose every token that carries loss to "
                                   f"truncation at max_length {report['max_length']} (rows "
                                   f"{_shown(loss['dropped_rows'], loss['dropped'])})", fix)])


def loss_tokens(masks: list[list[int]], cut: int | None) -> dict:
    """Tokens with loss in the measured rows and in what truncation to `cut` keeps (TRL keeps the start of each
    example); the rows left with none."""
    total = kept = 0
    dropped = []
    for number, mask in enumerate(masks, start=1):
        window = mask if cut is None else mask[:cut]
        total, kept = total + sum(mask), kept + sum(window)
        if sum(mask) and not sum(window):
            dropped.append(number)
    return {"all": total, "kept": kept, "tokens": sum(len(m) for m in masks), "dropped": len(dropped),
            "dropped_rows": dropped[:SHOW]}


def encode(row: dict, tokenizer, config: dict, masks: chat_masks.ChatMasks | None = None) -> tuple[list[int], list[int]]:
    """(token ids, 1 where the token is trained on) for one canonical row, built the way the trainer builds it:
    chat rows the runner masks exactly as runner.chat_masks gives them to the trainer.

    `config` holds the resolved loss options (chat_masks.loss_options): they decide the mask.
    """
    if chat_masks.masked_by_runner(row, config):
        out = chat_masks.row_tokens(masks or chat_masks.ChatMasks(tokenizer), row, config)
        return out["input_ids"], out["assistant_masks"]
    if "messages" in row:  # loss on every token
        ids = tokenizer.apply_chat_template(row["messages"], tokenize=True, return_dict=True)["input_ids"]
        return ids, [1] * len(ids)
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


def token_masks(rows, tokenizer, config: dict) -> list[list[int]]:
    """encode(row)[1] for every row (its length is the row's token count); rows of plain strings are tokenized as
    one batch (the fast tokenizer splits a batch across threads: ~10x faster for the 2,000 rows measured before
    every run)."""
    rows = list(rows)
    first = rows[0] if rows else {}
    plain = all(isinstance(first.get(k), str) for k in first if k in ("prompt", "completion", "chosen", "rejected", "text"))
    if not rows or "messages" in first or not plain or "text_pair" in first:
        masks = chat_masks.ChatMasks(tokenizer)
        return [encode(row, tokenizer, config, masks)[1] for row in rows]
    if "text" in first:
        texts, lm = [row["text"] for row in rows], "label" not in first
        return [[1] * (_with_eos(ids, tokenizer) if lm else len(ids)) for ids in tokenizer(texts)["input_ids"]]
    answers = ("completion",) if "completion" in first else ("chosen", "rejected")
    prompts = [row.get("prompt") or "" for row in rows]
    heads = [len(ids) if prompt else 0 for prompt, ids in zip(prompts, tokenizer(prompts)["input_ids"])]
    longest = [0] * len(rows)
    for answer in answers:  # DPO: the longer of chosen and rejected, as encode() takes
        full = tokenizer([prompt + row[answer] for prompt, row in zip(prompts, rows)])["input_ids"]
        longest = [max(n, _with_eos(ids, tokenizer)) for n, ids in zip(longest, full)]
    only_answer = config.get("completion_only_loss", True) is not False
    return [[0] * (head if only_answer else 0) + [1] * (n - (head if only_answer else 0))
            for head, n in zip(heads, longest)]


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


def _shown(rows: list[int], count: int) -> str:
    return ", ".join(map(str, rows)) + (", ..." if count > len(rows) else "")


def warnings(report: dict) -> list[str]:
    found = []
    if report["truncated"]:
        share = report["truncated"] / report["measured_rows"]
        found.append(f"{report['truncated']} of {report['measured_rows']} training examples measured ({share:.1%}) "
                     f"are longer than max_length {report['max_length']} and will be truncated")
    loss = report["loss_tokens"]
    if loss and loss["dropped"]:
        found.append(f"{loss['dropped']} of {report['measured_rows']} training examples measured lose every token "
                     f"that carries loss to truncation: they train on nothing (rows "
                     f"{_shown(loss['dropped_rows'], loss['dropped'])})")
    if report["leakage"] and report["leakage"]["count"]:
        leak = report["leakage"]
        found.append(f"{leak['count']} evaluation rows also appear in the training data (eval rows "
                     f"{leak['eval_rows']}, train rows {leak['train_rows']}): metrics on them are inflated")
    return found


def loss_line(report: dict) -> list[str]:
    loss = report["loss_tokens"]
    if loss is None:
        return []
    share = loss["all"] / loss["tokens"] if loss["tokens"] else 0.0
    kept = f", {loss['kept']} of them within max_length" if loss["kept"] != loss["all"] else ""
    return [f"tokens that carry loss: {loss['all']} of {loss['tokens']} ({share:.1%}){kept}; examples whose every "
            f"loss token is cut off: {loss['dropped']}"]


def render(report: dict) -> str:
    stats = report["token_lengths"]
    lines = [f"examples: {', '.join(f'{k} {v}' for k, v in report['examples'].items())}",
             f"training tokens per example: min {stats['min']}, median {stats['median']}, p95 {stats['p95']}, "
             f"max {stats['max']} (max_length {report['max_length']})",
             *loss_line(report),
             "first training example (text in ⟦ ⟧ carries no loss):", "  " + report["preview"].replace("\n", "\n  ")]
    lines += [f"warning: {w}" for w in report["warnings"]] or ["no warnings"]
    return "\n".join(lines)
