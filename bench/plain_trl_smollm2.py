"""SmolLM2-135M LoRA SFT written the way a TRL user would write it; no runner code is imported.

    python bench/plain_trl_smollm2.py MODEL_DIR ROWS OUT STEPS {defaults|fp32|bf16}

The plain side of `bench/overhead.py --real` and of `bench/cpu_precision.py`. MODEL_DIR is the converted
safetensors copy (bench/smollm2.py), ROWS a prompt/completion JSONL.
- defaults: only what the run must say (LoRA, batch 4, max_length 128, steps, learning rate, logging, no
  checkpoints or trackers, use_cpu); everything else is SFTConfig's default (bf16 autocast, activation
  checkpointing, fused AdamW, ...).
- fp32 / bf16: every setting the runner's recipe bench/recipes/overhead_smollm2.json resolves to on a CPU
  spelled out, with that precision: the runner and this script then run the same computation.
Writes OUT/plain.json: the loss history, the trainer's accelerator.mixed_precision and, from bench/meter.py
(which changes nothing in the run), the seconds of the steps after the first.
"""
import json
import sys
from pathlib import Path

from datasets import load_dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
from trl import SFTConfig, SFTTrainer

sys.path.insert(0, str(Path(__file__).parent))
from meter import TokenMeter  # noqa: E402

model_dir, rows, out, steps, mode = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
# use_cpu: a CPU benchmark; without it SFTConfig's default bf16 stops at "Your setup doesn't support bf16/gpu"
REQUIRED = dict(output_dir=out, per_device_train_batch_size=4, max_length=128, max_steps=steps, learning_rate=2e-4,
                logging_steps=1, logging_first_step=True, save_strategy="no", report_to="none", seed=42, use_cpu=True)
# what bench/recipes/overhead_smollm2.json resolves to on a CPU (the runner's schema defaults and CPU fast defaults)
EQUAL = dict(lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
             activation_checkpointing=False, optim="adamw_torch", dataloader_num_workers=0, packing=False,
             pad_to_multiple_of=None, use_liger_kernel=False, logging_nan_inf_filter=False)

set_seed(42)
tokenizer = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32")
train = load_dataset("json", data_files=rows, split="train")
settings = REQUIRED if mode == "defaults" else {**REQUIRED, **EQUAL, "bf16": mode == "bf16"}
args = SFTConfig(**settings)
peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
trainer = SFTTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer, peft_config=peft_config)
meter = TokenMeter(trainer.model, warmup=1)
trainer.add_callback(meter)
print(f"plain TRL ({mode}): accelerator.mixed_precision = {trainer.accelerator.mixed_precision}", flush=True)
trainer.train()
trainer.save_model(out)
(Path(out) / "plain.json").write_text(json.dumps({"mixed_precision": str(trainer.accelerator.mixed_precision),
                                                  "history": trainer.state.log_history,
                                                  "meter": meter.result(trainer.model)}))
