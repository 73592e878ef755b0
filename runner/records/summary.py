"""The few lines a user reads at the end of a run."""
from __future__ import annotations


def summary(manifest: dict) -> str:
    """The few lines a user reads at the end of a run."""
    lines = [f"run '{manifest['name']}' finished in {manifest['seconds']:.1f} s -> {manifest['output_dir']}"]
    losses = [h["loss"] for h in manifest["history"] if "loss" in h]
    if losses:
        lines.append(f"  train loss: {losses[0]:.4f} (first log) -> {losses[-1]:.4f} (last log)")
    evals = [(h["step"], h["eval_loss"]) for h in manifest["history"] if "eval_loss" in h]
    if evals:
        (s0, l0), (s1, l1) = evals[0], evals[-1]
        lines.append(f"  eval loss:  {l0:.4f} (step {s0}) -> {l1:.4f} (step {s1})")
    lines += metric_lines(manifest["metrics"])
    params = manifest["parameters"]
    lines.append(f"  parameters: {params['trainable']:,} trainable of {params['total']:,}")
    lines.append("  load it with from_pretrained(output_dir); report.md, metrics.json and run.json beside it")
    return "\n".join(lines)


def metric_lines(results: dict) -> list[str]:
    """`name: before -> after` for the scalar metrics (before only with a baseline)."""
    before, lines = results.get("before") or {}, []
    for name, value in (results.get("after") or {}).items():
        if isinstance(value, (int, float)):
            start = f"{_shown(before[name])} -> " if name in before else ""
            lines.append(f"  {name}: {start}{_shown(value)}")
    sources = (results.get("after") or {}).get("sources") or {}
    for source, values in sources.items():
        earlier = ((results.get("before") or {}).get("sources") or {}).get(source) or {}
        lines += [f"  {source} {name}: " + (f"{_shown(earlier[name])} -> " if name in earlier else "")
                  + _shown(value) for name, value in values.items() if isinstance(value, (int, float))]
    for when in ("before", "after"):
        if results.get("retention"):
            lines.append(f"  retention loss ({when}): {results['retention'][when]['loss']:.4f}")
    return lines


def _shown(value) -> str:
    """A count as a count (pairs: 200), a measurement to four places."""
    return str(value) if isinstance(value, int) else f"{value:.4f}"
