"""The run directory's README.md is a model card whose loading code works (it loads a tiny model)."""
from __future__ import annotations

def test_the_run_directory_readme_is_a_model_card_whose_loading_code_works(tmp_path):
    """A finished LoRA run: README.md is the runner's card (metadata header, base model, data, settings, metrics
    before/after, the recipe), not the libraries' template, and its Python snippet loads the trained model."""
    import json
    import re

    from assets import reverse_rows
    from conftest import base_recipe, write_json, write_jsonl
    from runner.plan.build import build_plan
    from runner.recipe.load import load_recipe
    from runner.commands.run import run

    write_jsonl(tmp_path / "train.jsonl", [{"text": r["prompt"] + r["completion"]} for r in reverse_rows(32, 1)])
    recipe = base_recipe(tmp_path, peft={"method": "lora", "r": 4, "lora_alpha": 8},
                         evaluation={"baseline": True, "metrics": ["loss"]}, data={"train": {"path": "train.jsonl"},
                                                                                  "eval_fraction": 0.25})
    run(build_plan(load_recipe(write_json(tmp_path / "recipe.json", recipe))), argv=["test"])
    card = (tmp_path / "run" / "README.md").read_text()
    assert "More Information Needed" not in card
    assert card.startswith("---\nbase_model: ") and "library_name: peft\n" in card and "- lora\n" in card
    for text in ("## Model", "- tuning: lora (r 4, lora_alpha 8", "## Data", "- format: text", "train.jsonl",
                 "## Training", "- learning_rate:", "## Results (held-out)", "| loss |", "## Recipe"):
        assert text in card, text
    snippet = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    scope: dict = {}
    exec(snippet, scope)  # noqa: S102  (the card's own instructions, run as a user would)
    assert type(scope["model"]).__name__ == "LlamaForCausalLM" and hasattr(scope["model"], "peft_config")
    assert json.loads(card.split("```json\n", 1)[1].split("```", 1)[0])["peft"]["r"] == 4
