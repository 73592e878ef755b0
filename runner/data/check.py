"""The data check (`python -m runner check-data RECIPE`, and before every run): what the data looks like to the trainer.

Errors (missing columns, empty splits, bad rows, labels outside the set) stop the run while the
data loads (`data.py`, `rows.py`); this adds the warnings: train/eval leakage, how many examples
`max_length` would truncate with token-length statistics, and one example shown as the model
will see it, with the tokens that carry loss marked. Only the tokenizer is loaded, never a model.
"""
from __future__ import annotations

import json
import statistics

from runner.data import chat_masks
from runner.data.streaming import first_row, head, is_stream, size
from runner.data import tool_calls
from runner.errors import Problem, RecipeError
from runner.data.check_report import render, warnings  # noqa: F401  (render: `check-data` prints it)
from runner.data.rows import shown_rows
from runner.plan.tasks import TASKS

SHOW = 5  # duplicate rows named in a warning


def check_chat_template(plan: dict, splits, tokenizer) -> None:
    """Conversations need a chat template, and one whose assistant turns the runner can mask when the loss is
    on them: said before any weights load, with the fix."""
    from trl.data_utils import is_conversational

    row = first_row(splits.train)
    if tokenizer.chat_template is None and is_conversational(row):
        raise RecipeError([Problem("/model/chat_template", "the data are conversations but the tokenizer has no "
                                   "chat template", "name a Jinja template file in model.chat_template")])
    masked = chat_masks.masked_by_runner(row, chat_masks.loss_options(plan))
    problems = chat_masks.template_problems(tokenizer) if masked else []
    if splits.tool_rows and not problems:
        problems = chat_masks.tool_problems(tokenizer, tool_rows_named(splits.tool_rows), masked)
    if problems:
        raise RecipeError(problems)


def tool_rows_named(found: dict) -> str:
    """'/data/train: rows 2, 5 of data/train.jsonl' for Splits.tool_rows, each source where tool calls are."""
    return "; ".join(f"{where}: {'row' if info['count'] == 1 else 'rows'} {shown_rows(info['rows'], info['count'])} "
                     f"of {info['source']}" for where, info in found.items())


def inspect(plan: dict, splits, tokenizer, sample: int | None = None) -> dict:
    """The data check's report; token lengths and loss tokens from the first `sample` training rows (all when None).

    Raises when training would train on nothing: no measured token carries loss, or truncation would cut the
    whole answer out of more than DROPPED_SHARE of the examples (TRL drops such examples).
    """
    config = chat_masks.loss_options(plan)
    task = TASKS[plan["task"]]
    token_loss = task.causal_lm
    max_length = config.get("max_length")
    rows = head(splits.train, sample)  # a stream's first rows (its first HEAD_ROWS when sample is None)
    masks = token_masks(rows, tokenizer, config, "/data/train")
    lengths = [len(mask) for mask in masks]
    cut = max_length if max_length and truncates_each_example(config) else None
    loss = loss_tokens(masks, cut, drops_emptied_examples(config)) if token_loss else None
    report = {
        "examples": {name: size(getattr(splits, name)) for name in ("train", "eval", "evaluation", "retention")
                     if getattr(splits, name) is not None},  # None: streamed, its size unknown
        "streamed": is_stream(splits.train),
        "token_lengths": length_stats(lengths),
        "max_length": max_length,
        "measured_rows": len(lengths),
        # examples cut to max_length that still train (those left without a loss token are counted in loss_tokens)
        "truncated": sum(n > cut for n in lengths) - (loss["emptied"] if loss else 0) if cut else 0,
        # what the trainer does with an example longer than max_length: cuts it, or leaves it out (reward pairs)
        "over_length": "dropped" if task.drops_long_examples else "truncated",
        "loss_tokens": loss,
        "eval_loss_tokens": eval_loss_tokens(splits.eval, sample, tokenizer, config, cut) if token_loss else None,
        "eval_left_out": left_out(splits.evaluation, sample, tokenizer, config, cut) if task.drops_long_examples
        else None,
        "leakage": leakage(splits.train if not is_stream(splits.train) else rows, splits.eval),
        # a model that scores whole sequences (a reward model) reads every token: nothing shown as without loss
        "preview": preview(rows[0], tokenizer, {**config, "completion_only_loss": False}
                           if task.scores_pairs else config),
        "sources": per_source(splits, sample, tokenizer, config, cut, token_loss),
    }
    if token_loss:
        refuse_training_on_nothing(report)
    if task.drops_long_examples:
        refuse_leaving_out_everything(report)
    report["warnings"] = warnings(report)
    return report


def per_source(splits, sample: int | None, tokenizer, config: dict, cut: int | None, token_loss: bool) -> dict | None:
    """A mixture's sources, each measured on its own first rows: its rows, what it gave the training rows (count,
    share of examples, estimated share of tokens), token lengths, truncation and loss tokens."""
    if splits.train_sources is None:
        return None
    found = {}
    drawn = splits.drawn or {}
    for name, rows in splits.train_sources.items():
        masks = token_masks(head(rows, sample), tokenizer, config)
        lengths = [len(mask) for mask in masks]
        loss = loss_tokens(masks, cut, drops_emptied_examples(config)) if token_loss else None
        found[name] = {"rows": size(rows), "drawn": drawn.get(name),
                       "share": drawn[name] / sum(drawn.values()) if drawn else None,
                       "mean_tokens": statistics.fmean(lengths), "token_lengths": length_stats(lengths),
                       "measured_rows": len(lengths), "truncated": sum(n > cut for n in lengths) if cut else 0,
                       "loss_tokens": loss}
    tokens = {name: entry["drawn"] * entry["mean_tokens"] for name, entry in found.items()
              if entry["drawn"] is not None}
    for name, entry in found.items():  # the mean of its measured rows stands for the rows it gave
        entry["token_share"] = tokens[name] / sum(tokens.values()) if name in tokens else None
    return found


def truncates_each_example(config: dict) -> bool:
    """TRL cuts each example to max_length unless packing splits or wraps it (bfd packing truncates too)."""
    return not config.get("packing") or config.get("packing_strategy", "bfd") == "bfd"


def drops_emptied_examples(config: dict) -> bool:
    """TRL's SFTTrainer leaves out examples that truncation leaves without a loss token (its filter after
    truncating); packed, such an example stays in its pack and adds no loss."""
    return not config.get("packing")


def eval_loss_tokens(held_out, sample: int | None, tokenizer, config: dict, cut: int | None) -> dict | None:
    """loss_tokens of the evaluation examples: TRL truncates and drops them as it does training examples."""
    if held_out is None or cut is None:
        return None
    return loss_tokens(token_masks(head(held_out, sample), tokenizer, config, "/data/eval"), cut,
                       drops_emptied_examples(config))


def left_out(held_out, sample: int | None, tokenizer, config: dict, cut: int | None) -> dict | None:
    """Evaluation examples longer than max_length, for a trainer that leaves such examples out (reward pairs)."""
    if held_out is None or cut is None:
        return None
    lengths = [len(mask) for mask in token_masks(head(held_out, sample), tokenizer, config, "/data/eval")]
    return {"dropped": sum(n > cut for n in lengths), "examples": len(lengths)}


def refuse_leaving_out_everything(report: dict) -> None:
    """A trainer that leaves out over-long examples must keep some to train on and some to evaluate on."""
    fix = "raise training.max_length, or shorten those examples (a pair is left out when either side is longer)"
    limit, measured = report["max_length"], report["measured_rows"]
    if report["truncated"] == measured:
        raise RecipeError([Problem("/training/max_length", f"all {measured} training examples measured are longer "
                                   f"than max_length {limit}: the trainer would leave every one out", fix)])
    held_out = report["eval_left_out"]
    if held_out and held_out["dropped"] == held_out["examples"]:
        raise RecipeError([Problem("/training/max_length", f"all {held_out['examples']} evaluation examples measured "
                                   f"are longer than max_length {limit}: the trainer would leave every one out and "
                                   "have nothing to evaluate on", fix)])


DROPPED_SHARE = 0.1  # more examples than this losing their whole answer to truncation stops the run


def refuse_training_on_nothing(report: dict) -> None:
    loss, measured = report["loss_tokens"], report["measured_rows"]
    fix = "raise training.max_length, or shorten or remove those examples (TRL keeps the start of each example)"
    if loss["kept"] == 0:
        cause = f" once truncated to max_length {report['max_length']}" if loss["all"] else ""
        raise RecipeError([Problem("/data/train", f"no token of the {measured} examples measured carries loss{cause}: "
                                   "training would learn nothing", fix if loss["all"] else
                                   "check data.format and the loss options (assistant_only_loss, completion_only_loss)")])
    if loss["emptied"] > DROPPED_SHARE * measured:
        raise RecipeError([Problem("/training/max_length", f"{loss['emptied']} of {measured} examples measured "
                                   f"({loss['emptied'] / measured:.0%}) would lose every token that carries loss to "
                                   f"truncation at max_length {report['max_length']} (rows "
                                   f"{shown_rows(loss['emptied_rows'], loss['emptied'])})", fix)])
    held_out = report["eval_loss_tokens"]
    if held_out and held_out["dropped"] == held_out["examples"]:
        raise RecipeError([Problem("/training/max_length", f"all {held_out['examples']} evaluation examples measured "
                                   f"lose every token that carries loss to truncation at max_length "
                                   f"{report['max_length']}: the trainer would drop them all and have nothing to "
                                   "evaluate on", fix)])


def loss_tokens(masks: list[list[int]], cut: int | None, drops: bool = True) -> dict:
    """Tokens with loss in the measured rows and in what truncation to `cut` keeps (TRL keeps the start of each
    example). `emptied`: the examples truncation leaves with no loss token; `dropped`: the examples the trainer
    leaves out (`drops`: unpacked, TRL filters out every example with no loss token left, also one that had none)."""
    total = kept = 0
    emptied, dropped = [], []
    for number, mask in enumerate(masks, start=1):
        window = mask if cut is None else mask[:cut]
        total, kept = total + sum(mask), kept + sum(window)
        if sum(mask) and not sum(window):
            emptied.append(number)
        if drops and cut is not None and not sum(window):
            dropped.append(number)
    return {"all": total, "kept": kept, "tokens": sum(len(m) for m in masks), "examples": len(masks),
            "emptied": len(emptied), "emptied_rows": emptied[:SHOW], "dropped": len(dropped),
            "dropped_rows": dropped[:SHOW]}


def encode(row: dict, tokenizer, config: dict, masks: chat_masks.ChatMasks | None = None) -> tuple[list[int], list[int]]:
    """(token ids, 1 where the token is trained on) for one canonical row, built the way the trainer builds it:
    chat rows the runner masks exactly as runner.data.chat_masks gives them to the trainer.

    `config` holds the resolved loss options (chat_masks.loss_options): they decide the mask.
    """
    if chat_masks.masked_by_runner(row, config):
        out = chat_masks.row_tokens(masks or chat_masks.ChatMasks(tokenizer), row, config)
        return out["input_ids"], out["assistant_masks"]
    if "messages" in row:  # loss on every token
        ids = tokenizer.apply_chat_template(tool_calls.for_template(row["messages"]), tokenize=True, return_dict=True,
                                            tools=tool_calls.tools_for_template(row.get("tools")))["input_ids"]
        return ids, [1] * len(ids)
    if set(row) <= PROMPT_ONLY:  # online RL: the prompt is all there is to tokenize; completions are generated
        ids = _prompt_ids(row["prompt"], tokenizer)
        return ids, [0] * len(ids)
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


def token_masks(rows, tokenizer, config: dict, where: str = "/data/train") -> list[list[int]]:
    """encode(row)[1] for every row (its length is the row's token count); rows of plain strings are tokenized as
    one batch (the fast tokenizer splits a batch across threads: ~10x faster for the 2,000 rows measured before
    every run)."""
    rows = list(rows)
    first = rows[0] if rows else {}
    plain = all(isinstance(first.get(k), str) for k in first if k in ("prompt", "completion", "chosen", "rejected", "text"))
    if not rows or "messages" in first or not plain or "text_pair" in first or set(first) <= PROMPT_ONLY:
        masks = chat_masks.ChatMasks(tokenizer)
        return [rendered(lambda: encode(row, tokenizer, config, masks)[1], number, where)
                for number, row in enumerate(rows, start=1)]
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


PROMPT_ONLY = {"prompt", "answer"}  # the fields of a prompt_only row


def _prompt_ids(prompt, tokenizer) -> list[int]:
    if isinstance(prompt, list):
        return tokenizer.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True,
                                             return_dict=True)["input_ids"]
    return tokenizer(prompt)["input_ids"]


def rendered(encode_row, number: int, where: str):
    """encode_row(); a chat template that refuses the row (jinja's raise_exception: "only supports single tool-calls",
    roles that must alternate) is the user's to fix, named by the row (of the data as loaded) at `where`."""
    try:
        return encode_row()
    except Exception as exc:  # noqa: BLE001 - jinja's TemplateError and whatever else a template raises
        if type(exc).__module__.split(".")[0] != "jinja2":
            raise
        raise RecipeError([Problem("/model/chat_template", f"the chat template cannot render row {number} of "
                                   f"{where}: {type(exc).__name__}: {str(exc).strip()[:300]}",
                                   "fix or remove that row, or name a Jinja template file in model.chat_template "
                                   "that renders it")]) from None


def _with_eos(ids: list[int], tokenizer) -> int:
    return len(ids) + (not ids or ids[-1] != tokenizer.eos_token_id)


def _with_prompt(prompt, answer, tokenizer) -> tuple[list[int], int]:
    """(prompt + answer ids, prompt length): the whole tokenized at once, as TRL does, then split."""
    head = _prompt_ids(prompt, tokenizer) if prompt else []
    if isinstance(answer, list):  # conversational
        full = tokenizer.apply_chat_template((prompt or []) + answer, tokenize=True, return_dict=True)["input_ids"]
        return full, len(head)
    prompt = prompt or ""
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


PREVIEW_CHARS = 2000  # of the example shown: its start and its end (where the answer usually is), half each


def preview(row: dict, tokenizer, config: dict, limit: int = PREVIEW_CHARS) -> str:
    """The first example as the model sees it; text in ⟦ ⟧ carries no loss. A long one is cut in the middle
    (a 3 MB example is not a preview), saying where and how much was left out."""
    ids, mask = encode(row, tokenizer, config)
    parts, start = [], 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or mask[i] != mask[start]:
            parts.append((tokenizer.decode(ids[start:i]), bool(mask[start])))
            start = i
    total = sum(len(text) for text, _ in parts)
    if total <= limit:
        return _marked(parts)
    head, tail = _take(parts, limit // 2), _take([(t[::-1], m) for t, m in reversed(parts)], limit // 2)
    tail = [(t[::-1], m) for t, m in reversed(tail)]
    return (f"{_marked(head)} [... cut after character {limit // 2:,}: {total - 2 * (limit // 2):,} of "
            f"{total:,} characters not shown ...] {_marked(tail)}")


def _take(parts: list[tuple[str, bool]], budget: int) -> list[tuple[str, bool]]:
    """The leading parts holding `budget` characters (the last one cut to fit)."""
    taken = []
    for text, trained in parts:
        if budget <= 0:
            break
        taken.append((text[:budget], trained))
        budget -= len(taken[-1][0])
    return taken


def _marked(parts: list[tuple[str, bool]]) -> str:
    return "".join(text if trained else f"⟦{text}⟧" for text, trained in parts)
