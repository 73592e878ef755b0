"""TRL with its defaults, as a user would write it: the "plain TRL" side of bench/throughput.py.

    python bench/plain_trl_throughput.py ASSETS_DIR MODE STEPS WARMUP    (MODE: full | lora | qlora)

Only what a run must say is set (batch 8, max_length 2048, steps, no saving or trackers); everything
else is SFTConfig's default: padded batches, activation checkpointing on, bf16 autocast over a model
that TRL loads in fp32, AdamW as transformers picks it. The model is built from its config (random
weights; TRL would load a path string in fp32 as well); QLoRA loads saved weights in 4-bit NF4.
bench/meter.py measures from the inside (it changes nothing in the run).
"""
import sys
import time

STARTED = time.perf_counter()

import torch  # noqa: E402
from datasets import load_dataset  # noqa: E402
from peft import LoraConfig  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig  # noqa: E402
from trl import SFTConfig, SFTTrainer  # noqa: E402

sys.path.insert(0, "bench")
from meter import FirstStep, TokenMeter, report  # noqa: E402

assets, mode, steps, warmup = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
tokenizer = AutoTokenizer.from_pretrained(f"{assets}/model")
if mode == "qlora":
    model = AutoModelForCausalLM.from_pretrained(f"{assets}/model", quantization_config=BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16))
else:
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(f"{assets}/model"))  # fp32, as TRL loads
train = load_dataset("json", data_files=f"{assets}/train.jsonl", split="train")
args = SFTConfig(output_dir=f"{assets}/out-trl", per_device_train_batch_size=8, max_length=2048, max_steps=steps,
                 logging_steps=10, save_strategy="no", report_to="none",
                 **({} if torch.cuda.is_available() else {"use_cpu": True, "bf16": False}))  # CPU: smoke test only
peft_config = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear") if mode != "full" else None
trainer = SFTTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer, peft_config=peft_config)
meter, first = TokenMeter(trainer.model, warmup), FirstStep(STARTED)
trainer.add_callback(meter)
trainer.add_callback(first)
trainer.train()
report({"side": "trl", "mode": mode, **meter.result(trainer.model)}, STARTED, first.at)
