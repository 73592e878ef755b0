"""SmolLM2-135M LoRA SFT as a TRL user writes it, on whatever device TRL picks (the GPU where there is one).

    python bench/plain_trl_smollm2_gpu.py MODEL_DIR ROWS OUT STEPS BATCH MAX_LENGTH

The plain side of bench/h200_smollm2.py. bench/plain_trl_smollm2.py is the same run pinned to the CPU (use_cpu);
this one sets only what the run must say (LoRA r 16 / alpha 32 / dropout 0 on every linear layer, batch, max_length,
steps, learning rate 2e-4, logging every step, seed 42, no checkpoints or trackers) and leaves everything else to
SFTConfig's defaults: bf16 autocast over the fp32 weights it loads, activation checkpointing, fused AdamW, padded
batches. No runner code is imported. Prints one `RESULT {json}` line: loss per step, the trainer's
accelerator.mixed_precision, the arguments that decide the computation, and bench/meter.py's tokens/s after the
first 5 steps, peak memory and time from process start to the end of the first step.
"""
import sys
import time

STARTED = time.perf_counter()

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from datasets import load_dataset  # noqa: E402
from peft import LoraConfig  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed  # noqa: E402
from trl import SFTConfig, SFTTrainer  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from meter import FirstStep, TokenMeter  # noqa: E402
from h200_common import training_args  # noqa: E402  (reads the trainer's arguments; changes nothing)

model_dir, rows, out = sys.argv[1], sys.argv[2], sys.argv[3]
steps, batch, max_length = int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
set_seed(42)
tokenizer = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32")
train = load_dataset("json", data_files=rows, split="train")
args = SFTConfig(output_dir=out, per_device_train_batch_size=batch, max_length=max_length, max_steps=steps,
                 learning_rate=2e-4, logging_steps=1, logging_first_step=True, save_strategy="no", report_to="none",
                 seed=42, **({} if torch.cuda.is_available() else {"use_cpu": True}))  # CPU: the dry run only
peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
trainer = SFTTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer, peft_config=peft_config)
meter, first = TokenMeter(trainer.model, warmup=min(5, steps - 1)), FirstStep(STARTED)
trainer.add_callback(meter)
trainer.add_callback(first)
trainer.train()
losses = [{"step": h["step"], "loss": h["loss"]} for h in trainer.state.log_history if "loss" in h]
result = {"side": "plain", "mixed_precision": str(trainer.accelerator.mixed_precision), "losses": losses,
          "args": training_args(trainer.args), **meter.result(trainer.model), "first_step_s": first.at,
          "process_s": time.perf_counter() - STARTED}
print("RESULT " + json.dumps(result), flush=True)
