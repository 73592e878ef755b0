"""The run directory's README.md: a model card of what was trained, from what, how, and how well.

It replaces the template TRL and peft write at each save (mostly "[More Information Needed]"). Hugging Face's
metadata header (base_model, library_name, tags) comes first, so the directory can be pushed to the Hub as is.
Built from the same plain dicts as report.md; tolerant of a failed run's missing parts.
"""
from __future__ import annotations

import json

from runner.records.report import metric_table


def render_card(manifest: dict, plan: dict, recipe: dict, metrics: dict, model_class: str) -> str:
    """`model_class`: the transformers Auto class that loads the saved model (the task's)."""
    model, peft = plan["model"], plan.get("peft")
    sections = [_header(plan), f"# {manifest.get('name', recipe.get('name'))}\n"]
    if recipe.get("description"):
        sections.append(recipe["description"] + "\n")
    if manifest.get("status") != "finished":
        sections.append(f"**This run did not finish** (status `{manifest.get('status')}`"
                        + (f": {manifest['error']}" if manifest.get("error") else "") + ").\n")
    sections += [
        "## Model\n\n" + "\n".join(_model_lines(manifest, model, peft, model_class)) + "\n",
        "## Data\n\n" + "\n".join(_data_lines(manifest, plan)) + "\n",
        "## Training\n\n" + "\n".join(_training_lines(manifest, plan)) + "\n",
        "## Results (held-out)\n\n" + (metric_table(metrics) or "No metrics were measured.") + "\n",
        "## How to use\n\n" + _usage(manifest, model_class) + "\n",
        "## Recipe\n\nThe resolved recipe this run was trained from (also in `recipe.json`; the run's full "
        "record is `run.json`, its report `report.md`):\n\n```json\n" + json.dumps(recipe, indent=2) + "\n```\n",
    ]
    return "\n".join(sections)


def _header(plan: dict) -> str:
    model, peft = plan["model"], plan.get("peft")
    lines = ["---", f"base_model: {json.dumps(model['name_or_path'])}",
             f"library_name: {'peft' if peft and 'kwargs' in peft else 'transformers'}",
             "tags:", "- recipe-runner", f"- {plan['task']}"]
    lines += [f"- {peft['method']}"] if peft else []  # lora, prompt_tuning, partial, ...
    return "\n".join(lines + ["---", ""])


def _model_lines(manifest: dict, model: dict, peft: dict | None, model_class: str) -> list[str]:
    params = manifest.get("parameters") or {}
    lines = [f"- base model: `{model['name_or_path']}`" + (f" (GGUF file `{model['gguf_file']}`, dequantized to "
                                                          f"{manifest.get('weights_dtype')})" if model.get("gguf_file")
                                                          else ""),
             f"- class: `transformers.{model_class}`"]
    adapter = bool(peft) and "kwargs" in peft  # partial tuning trains some of the model's own weights
    if model.get("init") == "random":
        lines.append("- weights: randomly initialised from that config (seeded)"
                     + ("; the start weights are kept in `base_model/`" if peft else ""))
    if adapter:
        settings = ", ".join(f"{k} {v}" for k, v in peft["kwargs"].items() if k in ("r", "lora_alpha",
                                                                                     "target_modules",
                                                                                     "num_virtual_tokens"))
        lines.append(f"- tuning: {peft['method']}" + (f" ({settings})" if settings else "")
                     + "; this directory holds the adapter, loaded on top of the base model")
    elif peft:
        lines.append(f"- tuning: {peft['method']} ({', '.join(map(str, peft.get('trainable') or []))} trained, the "
                     "rest frozen); this directory holds the whole model")
    else:
        lines.append("- tuning: the model's own weights (this directory holds the whole model)")
    if model.get("quantization"):
        lines.append(f"- base weights quantized while training: {model['quantization'].get('method', '')}"
                     f" {model['quantization'].get('bits', '')}-bit".rstrip())
    if params.get("total"):
        lines.append(f"- parameters: {params['trainable']:,} trained of {params['total']:,}")
    return lines


def _source(source: dict | None) -> str:
    if not source:
        return "-"
    if "path" in source:
        return f"`{source['path']}`"
    return f"`{source['hub']}` split `{source.get('split')}`" + (f" (revision {source['revision']})"
                                                                 if source.get("revision") else "")


def _data_lines(manifest: dict, plan: dict) -> list[str]:
    data, examples = plan["data"], manifest.get("examples") or {}
    lines = [f"- format: {data['format']}"]
    for split in ("train", "eval"):
        parts = data.get(split) or []
        counted = (f", {examples[split]:,} examples" if examples.get(split) is not None else
                   ", streamed" if split in examples else "")
        if len(parts) == 1:
            lines.append(f"- {split}: {_source(parts[0]['source'])}{counted}")
        elif parts:
            how = data["mixture"]["strategy"] if split == "train" else "concatenate"
            lines.append(f"- {split}: a mixture of {len(parts)} sources ({how}){counted}")
            given = examples.get(f"{split}_sources") or {}
            lines += [f"  - {part['name']}: {_source(part['source'])}, format {part['format']}"
                      + (f", weight {part['weight']}" if how == "interleave" else "")
                      + (f", {given[part['name']]:,} examples" if part["name"] in given else "") for part in parts]
    lines += [f"- note: {warning}" for warning in manifest.get("data_warnings") or []]
    return lines


KEY_SETTINGS = ("learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size",
                "gradient_accumulation_steps", "max_length", "lr_scheduler_type", "seed")


def _training_lines(manifest: dict, plan: dict) -> list[str]:
    config = manifest.get("trainer_config") or plan["trainer"]["config"]
    trainer = f" (`{manifest['trainer']}`)" if manifest.get("trainer") else ""
    lines = [f"- task: {plan['task']}{trainer}"]
    shown = [key for key in KEY_SETTINGS if config.get(key) not in (None, -1)]
    if config.get("max_steps") not in (None, -1):  # max_steps wins over epochs, as in transformers
        shown = [key for key in shown if key != "num_train_epochs"]
    lines += [f"- {key}: {config[key]}" for key in shown]
    if manifest.get("mixed_precision"):
        lines.append(f"- precision: {manifest['mixed_precision']}")
    versions = manifest.get("versions") or {}
    lines.append("- libraries: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v))
    if manifest.get("seconds") is not None:
        gpus = ", ".join((manifest.get("hardware") or {}).get("gpus") or []) or "a CPU"
        lines.append(f"- took {manifest['seconds']:,.0f} s on {gpus}")
    return lines


def _usage(manifest: dict, cls: str) -> str:
    run_dir = manifest.get("output_dir", ".")
    return ("```python\n"
            f"from transformers import AutoTokenizer, {cls}\n\n"
            f"model = {cls}.from_pretrained({run_dir!r})\n"
            f"tokenizer = AutoTokenizer.from_pretrained({run_dir!r})\n"
            "```\n\n"
            f"or from the command line: `python -m runner predict {run_dir} --text \"...\"`.")
