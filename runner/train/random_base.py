"""An adapter on randomly initialised weights is useless without them: the start weights, kept for the run directory."""
from __future__ import annotations

from pathlib import Path

BASE_MODEL_DIR = "base_model"


def keep_random_base(model, run_dir: Path) -> dict:
    """An adapter on randomly initialised weights is useless without them: keep them for the run directory.

    A copy is taken now, before peft wraps the model, and `train` saves it as run_dir/base_model once
    the directory is claimed. peft records `model.name_or_path` as the adapter's base, so pointing it
    there makes the adapter load back with from_pretrained like any other.
    """
    weights = {name: tensor.detach().to("cpu", copy=True) for name, tensor in model.state_dict().items()}
    model.config._name_or_path = model.name_or_path = str(run_dir / BASE_MODEL_DIR)
    return {"weights": weights, "config": model.config.to_dict()}


def save_random_base(base: dict, tokenizer, folder: Path) -> None:
    from safetensors.torch import save_file
    from transformers import AutoConfig

    folder.mkdir(parents=True, exist_ok=True)
    config = dict(base["config"])
    AutoConfig.for_model(config.pop("model_type"), **config).save_pretrained(folder)
    save_file({k: v.contiguous() for k, v in base["weights"].items()}, folder / "model.safetensors",
              metadata={"format": "pt"})
    tokenizer.save_pretrained(folder)
