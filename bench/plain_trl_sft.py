"""The same SFT run as bench/recipes/overhead.json, written the way a TRL user would write it.

    python bench/plain_trl_sft.py OUTPUT_DIR

Kept deliberately plain: no runner code is imported.
"""
import sys

from datasets import load_dataset
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, set_seed
from trl import SFTConfig, SFTTrainer

ASSETS = "recipes/assets"

set_seed(42)
tokenizer = AutoTokenizer.from_pretrained(f"{ASSETS}/tiny-llama")
model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(f"{ASSETS}/tiny-llama"))
train = load_dataset("json", data_files=f"{ASSETS}/reverse/train.jsonl", split="train")
args = SFTConfig(
    output_dir=sys.argv[1],
    learning_rate=2e-3,
    lr_scheduler_type="cosine",
    warmup_steps=30,
    max_steps=200,
    per_device_train_batch_size=32,
    max_length=64,
    logging_steps=50,
    logging_first_step=True,
    save_strategy="no",
    report_to="none",
    bf16=False,
    activation_checkpointing=False,
    optim="adamw_torch",
    seed=42,
)
trainer = SFTTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer)
trainer.train()
trainer.save_model(sys.argv[1])
