"""report.md and loss_curves.png: what a run did, readable without opening run.json.

Everything here takes plain dicts (the manifest, the resolved recipe, the metrics) and tolerates
missing keys, because a failed run has to be reportable too. matplotlib is imported only inside
`loss_curves_png`, so importing this module stays cheap.
"""
from __future__ import annotations

from pathlib import Path

from runner.records.atomic import write_atomic, write_text

MISSING = "-"


def write_report(run_dir: Path, manifest: dict, recipe: dict, metrics: dict) -> dict[str, Path]:
    """Write loss_curves.png (when anything was logged) and report.md into run_dir."""
    png = loss_curves_png(manifest.get("history") or [], Path(run_dir) / "loss_curves.png")
    text = render_report(manifest, recipe, metrics, png.name if png else None)
    written = {"report": write_text(Path(run_dir) / "report.md", text)}
    return {**written, "loss_curves": png} if png else written


def loss_curves_png(history: list[dict], path: Path) -> Path | None:
    """Train and eval loss against step on one axes; None (and no file) when no loss was logged."""
    train = [(h["step"], h["loss"]) for h in history if "loss" in h and "step" in h]
    evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h and "step" in h]
    if not train and not evals:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display on training machines; must precede the pyplot import
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    try:
        if train:
            ax.plot(*zip(*train), marker=".", label="train loss")
        if evals:  # eval points are few (often one): markers keep a single point visible
            ax.plot(*zip(*evals), marker="o", label="eval loss")
        ax.set(title="Loss curves", xlabel="step", ylabel="loss")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        return write_atomic(Path(path), lambda handle: fig.savefig(handle, format="png", dpi=100))
    finally:
        plt.close(fig)


def metric_table(metrics: dict) -> str:
    """Scalar metrics before/after/change, then retention, then confusion matrices and per-class tables."""
    metrics = metrics or {}
    before, after = metrics.get("before") or {}, metrics.get("after") or {}
    parts = [_comparison_table(before, after)] if _scalars(before) or _scalars(after) else []
    for name in list(after.get("sources") or {}) or list(before.get("sources") or {}):
        parts.append(f"Evaluation source `{name}`:\n\n" + _comparison_table(
            (before.get("sources") or {}).get(name) or {}, (after.get("sources") or {}).get(name) or {}))
    retention = metrics.get("retention")
    if retention:
        parts.append("Retention (general ability the fine-tuning should keep):\n\n"
                     + _comparison_table(retention.get("before") or {}, retention.get("after") or {}))
    for stage, values in (("before", before), ("after", after)):
        if isinstance(values.get("confusion_matrix"), dict):
            parts.append(f"Confusion matrix ({stage}; rows: true label, columns: predicted):\n\n"
                         + _confusion_table(values["confusion_matrix"]))
        if isinstance(values.get("per_class"), dict):
            parts.append(f"Per class ({stage}):\n\n" + _per_class_table(values["per_class"]))
    return "\n\n".join(parts)


def _scalars(values: dict) -> dict:
    """Nested dicts (confusion matrix, per class) get their own tables, not a row here."""
    return {k: v for k, v in values.items() if not isinstance(v, (dict, list))}


def _comparison_table(before: dict, after: dict) -> str:
    before, after = _scalars(before), _scalars(after)
    rows = ["| metric | before | after | change |", "|---|---|---|---|"]
    for name in list(after) + [n for n in before if n not in after]:
        old, new = before.get(name), after.get(name)
        rows.append(f"| {name} | {_number(old)} | {_number(new)} | {_change(old, new)} |")
    return "\n".join(rows)


def _number(value) -> str:
    return MISSING if value is None else _trim(f"{value:.4f}") if isinstance(value, float) else str(value)


def _change(old, new) -> str:
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (old, new))
    if not numeric:
        return MISSING
    delta = round(new - old, 4)
    return "0" if delta == 0 else _trim(f"{delta:+.4f}")  # no "-0" for a change that rounds away


def _trim(text: str) -> str:
    """0.8800 -> 0.88, 2.0000 -> 2: four decimals at most, no noise."""
    return text.rstrip("0").rstrip(".") if "." in text else text


def _confusion_table(confusion: dict) -> str:
    labels = [str(label) for label in confusion.get("labels", [])]
    rows = ["| true \\ predicted | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
    for label, counts in zip(labels, confusion.get("matrix", [])):
        rows.append(f"| {label} | " + " | ".join(str(c) for c in counts) + " |")
    return "\n".join(rows)


def _per_class_table(per_class: dict) -> str:
    columns = list(dict.fromkeys(key for stats in per_class.values() for key in stats))
    rows = ["| class | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for label, stats in per_class.items():
        rows.append(f"| {label} | " + " | ".join(_number(stats.get(c)) for c in columns) + " |")
    return "\n".join(rows)


def render_report(manifest: dict, recipe: dict, metrics: dict, png_name: str | None) -> str:
    manifest, recipe = manifest or {}, recipe or {}
    lines = [f"# Run report: {manifest.get('name', MISSING)} ({manifest.get('status', 'unknown')})", ""]
    lines += [f"- {key}: {manifest[key]}" for key in ("started_at", "finished_at", "output_dir", "recipe_file")
              if manifest.get(key)]
    if manifest.get("error"):
        lines.append(f"- error: `{manifest['error']}`")
    lines += ["", "## Key settings", ""] + [f"- {line}" for line in key_settings(manifest, recipe)]
    if manifest.get("data_warnings"):
        lines += ["", "## Data warnings", ""] + [f"- {warning}" for warning in manifest["data_warnings"]]
    if png_name:
        lines += ["", "## Loss curves", "", f"![loss curves]({png_name})"]
    table = metric_table(metrics)
    lines += ["", "## Metrics", "", table or "No metrics recorded."]
    lines += ["", "## Parameters", "", _parameters(manifest.get("parameters"))]
    lines += ["", "## Environment", ""] + _environment(manifest)
    return "\n".join(lines) + "\n"


def _model(model: dict, manifest: dict) -> str:
    """Where the weights came from; a GGUF file is named, with the dtype its blocks were dequantized to."""
    name = model.get("name_or_path", MISSING)
    if not model.get("gguf_file"):
        return name
    return f"{name}, GGUF file {model['gguf_file']} (dequantized to {manifest.get('weights_dtype', MISSING)})"


def key_settings(manifest: dict, recipe: dict) -> list[str]:
    # the runner's own settings (a classifier's max_length) count as much as the trainer's
    config = {**(manifest.get("runner_settings") or {}), **(manifest.get("trainer_config") or {})}
    peft = recipe.get("peft") or {}
    examples = manifest.get("examples") or {}
    method = peft.get("method", "none")
    if peft.get("r"):
        method += f" (r={peft['r']}, alpha={peft.get('lora_alpha', MISSING)})"
    return [
        f"task: {recipe.get('task', MISSING)}",
        f"model: {_model(recipe.get('model') or {}, manifest)}",
        f"tuning method: {method}",
        f"data format: {(recipe.get('data') or {}).get('format', MISSING)}",
        f"examples: {examples.get('train', MISSING)} train, {examples.get('eval', MISSING)} eval",
        f"learning rate: {config.get('learning_rate', MISSING)}",
        f"length: {_length(config, manifest.get('history') or [])}",
        f"global batch: {_global_batch(config, manifest.get('hardware') or {})}",
        f"max_length: {config.get('max_length', MISSING)}",
        f"precision: {'bf16' if config.get('bf16') else 'fp16' if config.get('fp16') else 'fp32'}",
        f"wall time: {_duration(manifest.get('seconds'))}",
    ]


def _length(config: dict, history: list[dict]) -> str:
    # transformers: max_steps > 0 overrides num_train_epochs, so say whichever one was in charge.
    max_steps = config.get("max_steps")
    planned = (f"max_steps {max_steps}" if isinstance(max_steps, int) and max_steps > 0
               else f"{config.get('num_train_epochs', MISSING)} epochs")
    steps = [h["step"] for h in history if "step" in h]
    return f"{planned} (ran {max(steps)} steps)" if steps else planned


def _global_batch(config: dict, hardware: dict) -> str:
    per_device = config.get("per_device_train_batch_size")
    if per_device is None:
        return MISSING
    accumulation = config.get("gradient_accumulation_steps") or 1
    world = hardware.get("world_size") or 1
    return (f"{per_device} x {accumulation} x {world} = {per_device * accumulation * world} sequences per "
            "optimizer step (per-device batch x gradient accumulation x processes)")


def _duration(seconds) -> str:
    if not isinstance(seconds, (int, float)):
        return "not recorded"
    minutes, rest = divmod(int(round(seconds)), 60)
    return f"{seconds:.1f} s ({minutes}m {rest:02d}s)" if minutes else f"{seconds:.1f} s"


def _parameters(params: dict | None) -> str:
    if not params or not params.get("total"):
        return "Not recorded."
    share = params.get("trainable_share", params.get("trainable", 0) / params["total"])
    return f"{params.get('trainable', 0):,} trainable of {params['total']:,} ({share * 100:.2f}%)"


def _environment(manifest: dict) -> list[str]:
    hw, versions = manifest.get("hardware") or {}, manifest.get("versions") or {}
    lines = ["| library | version |", "|---|---|"] if versions else ["Versions not recorded."]
    lines += [f"| {lib} | {version or 'not installed'} |" for lib, version in versions.items()]
    lines += ["", f"- platform: {hw.get('platform', MISSING)}", f"- CPUs: {hw.get('cpu_count', MISSING)}",
              f"- GPUs: {', '.join(hw.get('gpus') or []) or 'none'}", f"- bf16 supported: {hw.get('bf16', MISSING)}",
              f"- processes (world size): {hw.get('world_size', MISSING)}"]
    return lines
