"""Measure a trained (or not yet trained) model: the plan's metrics, offline, before and after training.

Losses come from the trainer's own evaluation loop; generated answers from `generate` (greedy by
default); classification metrics from the trainer's predictions. Metric arithmetic lives in
`metrics.py`.
"""
from __future__ import annotations

from runner.evaluate import metrics as m
from runner.plan.tasks import GENERATIVE, import_dotted

LABEL_METRICS = m.CLASSIFICATION_METRICS + ("confusion_matrix",)


def measure(trainer, plan: dict, splits) -> dict:
    """The plan's metrics on the evaluation data, plus retention loss when configured."""
    wanted = plan["evaluation"]["metrics"]
    results: dict = {}
    if splits.evaluation is not None and wanted:
        features = eval_features(trainer, plan, splits)
        results.update(loss_metrics(trainer.evaluate(eval_dataset=features), wanted))
        if any(name in LABEL_METRICS for name in wanted):
            results.update(label_metrics(trainer, plan, splits.evaluation, wanted))
        generative = [name for name in wanted if name in GENERATIVE]
        if generative:
            predictions, references = generated_answers(trainer, plan, splits.evaluation)
            results.update(m.generation_metrics(generative, predictions, references))
    return results


def wrapped_by_engine(trainer) -> bool:
    """Several processes, DeepSpeed or FSDP: the model is wrapped when train() starts, and an evaluation before
    that breaks train() (seen with transformers 5.23: under DDP the ranks then trained unsynchronised copies,
    each on its own batches; under DeepSpeed train() found an inference engine and failed)."""
    return bool(trainer.args.world_size > 1 or getattr(trainer, "is_deepspeed_enabled", False)
                or getattr(trainer, "is_fsdp_enabled", False))


def measure_at_train_start(trainer, plan: dict, splits, results: dict, early: dict):
    """A callback taking the before-training measurements at the start of train(), inside the engine."""
    from transformers import TrainerCallback

    class MeasureAtStart(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            if plan["evaluation"]["baseline"]:
                results["before"] = measure(trainer, plan, splits)
            else:
                results["before"] = None
            early.update(retention=measure_retention(trainer, splits), in_train=True)

    return MeasureAtStart()


def measure_retention(trainer, splits) -> dict | None:
    if splits.retention is None:
        return None
    loss = trainer.evaluate(eval_dataset=splits.retention, metric_key_prefix="retention")["retention_loss"]
    return {"loss": loss, "perplexity": m.perplexity(loss)}


def eval_features(trainer, plan: dict, splits):
    """What trainer.evaluate gets: None reuses the trainer's own eval set; TRL prepares raw rows itself."""
    if splits.evaluation is splits.eval:
        return None
    featurize = plan["evaluation"].get("features")
    return import_dotted(featurize)(trainer, plan, splits.evaluation) if featurize else splits.evaluation


def loss_metrics(evaluated: dict, wanted: list[str]) -> dict:
    out = {}
    if "loss" in wanted or "perplexity" in wanted:
        out["loss"] = evaluated["eval_loss"]
    if "perplexity" in wanted:
        out["perplexity"] = m.perplexity(evaluated["eval_loss"])
    if "rewards" in wanted:  # TRL's DPO logs eval_rewards/chosen, /rejected, /accuracies, /margins
        out.update({k.removeprefix("eval_"): v for k, v in evaluated.items() if k.startswith("eval_rewards/")})
    return out


def label_metrics(trainer, plan: dict, dataset, wanted: list[str]) -> dict:
    predict = import_dotted(plan["evaluation"]["label_predictions"])
    predictions, references = predict(trainer, dataset, plan)
    names = [trainer.model.config.id2label[i] for i in range(trainer.model.config.num_labels)]
    found = m.classification_metrics(predictions, references, names)
    out = {name: found[name] for name in wanted if name in m.CLASSIFICATION_METRICS}
    if "confusion_matrix" in wanted:
        out["confusion_matrix"] = found["confusion_matrix"]
        out["per_class"] = found["per_class"]
    return out


def generated_answers(trainer, plan: dict, dataset) -> tuple[list[str], list[str]]:
    """Greedy (or configured) answers to the first `max_examples` prompts, and their references."""
    limit = plan["evaluation"]["max_examples"]
    rows = dataset.select(range(min(limit or len(dataset), len(dataset))))
    tokenizer = trainer.processing_class
    pairs = [PROMPT_AND_ANSWER[plan["evaluation"]["prompt_and_answer"]](row, tokenizer) for row in rows]
    pairs = [p for p in pairs if p is not None]
    prompts, references = [p for p, _ in pairs], [a for _, a in pairs]
    return generate_across_ranks(trainer.model, tokenizer, prompts, plan["evaluation"]["generation"]), references


def generate_across_ranks(model, tokenizer, prompts: list[list[int]], settings: dict) -> list[str]:
    """Under several processes each generates its share of the prompts; the answers are gathered in order.

    Every rank makes the same number of `generate` calls (a short share is padded with copies of a
    prompt whose answers are dropped): under ZeRO-3 and FSDP every forward gathers weights from all
    ranks, so a rank that stopped early would leave the others waiting forever. transformers then
    generates with synced_gpus on its own. Greedy answers do not depend on which rank made them.
    """
    import torch.distributed as dist

    from runner.launch.ranks import shard_bounds

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1 or not prompts:
        return generate(model, tokenizer, prompts, settings)
    world, rank = dist.get_world_size(), dist.get_rank()
    start, stop = shard_bounds(len(prompts), rank, world)
    largest = shard_bounds(len(prompts), 0, world)[1]  # rank 0's share is never smaller than another's
    share = prompts[start:stop]
    answers = generate(model, tokenizer, share + [prompts[0]] * (largest - len(share)), settings)[:len(share)]
    gathered: list = [None] * world
    dist.all_gather_object(gathered, answers)
    return [answer for part in gathered for answer in part]


def prompt_completion(row: dict, tokenizer):
    """Prompt token ids as TRL builds them for training (special tokens added), and the completion."""
    prompt = row["prompt"]
    if isinstance(prompt, list):  # conversational: the completion is the assistant turn(s)
        ids = tokenizer.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True,
                                            return_dict=True)["input_ids"]
        return ids, "".join(turn["content"] for turn in row["completion"])
    return tokenizer(prompt)["input_ids"], row["completion"]


def messages(row: dict, tokenizer):
    """The conversation up to its last assistant turn is the prompt; that turn is the reference."""
    turns = row["messages"]
    if not turns or turns[-1]["role"] != "assistant":
        return None
    ids = tokenizer.apply_chat_template(turns[:-1], tokenize=True, add_generation_prompt=True,
                                        return_dict=True)["input_ids"]
    return ids, turns[-1]["content"]


def preference(row: dict, tokenizer):
    """With an explicit prompt, the chosen response is the reference answer; implicit-prompt rows are skipped."""
    if not row.get("prompt"):
        return None
    return prompt_completion({"prompt": row["prompt"], "completion": row["chosen"]}, tokenizer)


PROMPT_AND_ANSWER = {"prompt_completion": prompt_completion, "messages": messages, "preference": preference}


def stop_tokens(model, tokenizer) -> list[int]:
    """The model's own end tokens (TRL adds the tokenizer's end-of-turn token to them) and the tokenizer's EOS."""
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids = configured if isinstance(configured, list) else [configured] if configured is not None else []
    return list(dict.fromkeys(ids + [tokenizer.eos_token_id]))


def generate(model, tokenizer, prompts: list[list[int]], settings: dict) -> list[str]:
    """Batched generation from token ids with left padding; returns only the new text, special tokens removed."""
    import torch

    kwargs = {"max_new_tokens": settings["max_new_tokens"], "do_sample": settings["do_sample"],
              "num_beams": settings["num_beams"], "pad_token_id": tokenizer.pad_token_id,
              "eos_token_id": stop_tokens(model, tokenizer)}
    if settings["do_sample"]:
        kwargs.update(temperature=settings["temperature"], top_p=settings["top_p"])
    side, was_training = tokenizer.padding_side, model.training
    tokenizer.padding_side = "left"  # generation continues from the right end of every row
    model.eval()
    answers: list[str] = []
    from tqdm.auto import tqdm

    try:
        starts = range(0, len(prompts), settings["batch_size"])
        for start in tqdm(starts, desc="generating", unit="batch", disable=len(starts) < 2):
            chunk = [{"input_ids": ids} for ids in prompts[start:start + settings["batch_size"]]]
            batch = tokenizer.pad(chunk, return_tensors="pt").to(model.device)
            with torch.no_grad():
                output = model.generate(**batch, **kwargs)
            new_tokens = output[:, batch["input_ids"].shape[1]:]
            answers += tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return answers
