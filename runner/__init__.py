"""Declarative recipe runner for fine-tuning language models.

    python -m runner validate recipes/*.json       # check recipes (no torch import)
    python -m runner plan recipes/quickstart.json  # what will be built, with which arguments
    python -m runner recipes/quickstart.json       # train
    accelerate launch -m runner recipes/sft_lora_chat.json
"""

__version__ = "0.1.0"
