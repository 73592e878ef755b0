"""The data check's report in words: the warnings a run prints and records, and what `check-data` shows.

Counts are said in the trainer's terms (runner/data/check.py measures them the way TRL then builds the data): an
example cut to max_length still trains; one whose every loss token is cut away is dropped (unpacked) or trains on
nothing in its pack.
"""
from __future__ import annotations

from runner.data.rows import shown_rows


def warnings(report: dict) -> list[str]:
    found = truncation_warnings(report)
    held_out = report.get("eval_loss_tokens")
    if held_out and held_out["dropped"]:
        count, measured = held_out["dropped"], held_out["examples"]
        found.append(f"{_of(count, measured, report['examples'].get('eval'))} evaluation examples will be dropped by "
                     f"the trainer: truncation at max_length {report['max_length']} cuts away every token that "
                     f"carries loss (rows {shown_rows(held_out['dropped_rows'], count)}); the evaluation loss is "
                     f"measured on the other {measured - count}")
    left_out = report.get("eval_left_out")
    if left_out and left_out["dropped"]:
        count, measured = left_out["dropped"], left_out["examples"]
        found.append(f"{_of(count, measured, report['examples'].get('evaluation'))} evaluation examples are longer than "
                     f"max_length {report['max_length']} and will be left out: they are measured on the other "
                     f"{measured - count}" + ("" if measured == report["examples"].get("evaluation") else " measured"))
    unused = [name for name, entry in (report.get("sources") or {}).items() if entry["drawn"] == 0]
    if unused:
        found.append(f"source(s) {', '.join(unused)} gave no training examples: the draw ended before reaching them "
                     "(raise their weight, or use stopping_strategy all_exhausted)")
    if report["leakage"] and report["leakage"]["count"]:
        leak = report["leakage"]
        found.append(f"{leak['count']} evaluation rows also appear in the training data (eval rows "
                     f"{leak['eval_rows']}, train rows {leak['train_rows']}): metrics on them are inflated")
    return found


def truncation_warnings(report: dict) -> list[str]:
    """What truncation does to the training examples, in the trainer's terms: cut and still trained, dropped
    (unpacked: TRL leaves them out), or kept in a pack with nothing to learn."""
    found, measured, limit = [], report["measured_rows"], report["max_length"]
    total, streamed = report["examples"].get("train"), report.get("streamed", False)
    of = lambda count: _of(count, measured, total, streamed)  # noqa: E731
    if report["truncated"]:
        share = report["truncated"] / measured
        fate = OVER_LENGTH[report.get("over_length", "truncated")]
        found.append(f"{of(report['truncated'])} training examples ({share:.1%}) are longer than "
                     f"max_length {limit} and will be {fate}")
    loss = report["loss_tokens"]
    if loss and loss["dropped"]:
        found.append(f"{of(loss['dropped'])} training examples will be dropped by the trainer: "
                     f"truncation at max_length {limit} cuts away every token that carries loss (rows "
                     f"{shown_rows(loss['dropped_rows'], loss['dropped'])}); it trains on the other "
                     f"{measured - loss['dropped']}" + ("" if total == measured and not streamed else " measured"))
    elif loss and loss["emptied"]:
        found.append(f"{of(loss['emptied'])} training examples lose every token that carries loss "
                     f"to truncation at max_length {limit}: packed, they stay in the data and train on nothing "
                     f"(rows {shown_rows(loss['emptied_rows'], loss['emptied'])})")
    return found


# the trainer's way with an example longer than max_length (the report's `over_length`)
OVER_LENGTH = {"truncated": "truncated to it (the start is kept and still carries loss)",
               "dropped": "left out by the trainer (TRL's RewardTrainer drops a pair when either side is longer; "
                          "evaluation pairs too)"}


def _of(count: int, measured: int, total: int | None, streamed: bool = False) -> str:
    """'3 of the 25' when every example was measured, else '3 of the first 2000 measured (of 50000)'; a stream's
    total is not known."""
    if streamed:
        return f"{count} of the first {measured} measured (the training data streams)"
    return f"{count} of the {measured}" if total in (None, measured) else \
        f"{count} of the first {measured} measured (of {total})"


def loss_line(report: dict) -> list[str]:
    loss = report["loss_tokens"]
    if loss is None:
        return []
    share = loss["all"] / loss["tokens"] if loss["tokens"] else 0.0
    kept = f", {loss['kept']} of them within max_length" if loss["kept"] != loss["all"] else ""
    packed = f"; packed with every loss token cut off: {loss['emptied']}" if loss["emptied"] > loss["dropped"] else ""
    return [f"tokens that carry loss: {loss['all']} of {loss['tokens']} ({share:.1%}){kept}; examples truncated: "
            f"{report['truncated']}; examples dropped (every loss token cut off): {loss['dropped']}{packed}"]


def source_lines(report: dict) -> list[str]:
    """A mixture's sources, one line each: what it gave the training rows and how its examples measure."""
    if not report.get("sources"):
        return []
    lines = ["sources (examples given to the training rows, their share of examples and of tokens; measured on "
             "each source's first rows):"]
    for name, entry in report["sources"].items():
        stats, loss = entry["token_lengths"], entry["loss_tokens"]
        loss_part = f", loss tokens {loss['all']} of {loss['tokens']} ({loss['all'] / loss['tokens']:.1%})" \
            if loss and loss["tokens"] else ""
        given = (f"{entry['drawn']} examples from its {entry['rows']} rows; {entry['share']:.1%} of examples, "
                 f"~{entry['token_share']:.1%} of tokens" if entry["drawn"] is not None else
                 "streamed (what it gives is known once training reads it)")
        lines.append(f"  {name}: {given}; tokens per example median {stats['median']}, max {stats['max']}; "
                     f"truncated {entry['truncated']} of {entry['measured_rows']}{loss_part}")
    return lines


def render(report: dict) -> str:
    stats = report["token_lengths"]
    counts = ", ".join(f"{split} {count if count is not None else '(streamed)'}"
                       for split, count in report["examples"].items())
    lines = [f"examples: {counts}",
             f"training tokens per example: min {stats['min']}, median {stats['median']}, p95 {stats['p95']}, "
             f"max {stats['max']} (max_length {report['max_length']})",
             *loss_line(report),
             *source_lines(report),
             "first training example (text in ⟦ ⟧ carries no loss):", "  " + report["preview"].replace("\n", "\n  ")]
    lines += [f"warning: {w}" for w in report["warnings"]] or ["no warnings"]
    return "\n".join(lines)
