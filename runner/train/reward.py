"""Reward models: one score per text, and the scores of held-out pairs.

The reward task's code rows (runner/evaluate/measure.py PAIR_SCORES, runner/commands/inference.py PREDICT). TRL's
RewardTrainer trains the model; scoring here reads the pairs exactly as that trainer prepared them for training.
"""
from __future__ import annotations


def pair_scores(trainer, dataset, plan: dict) -> tuple[list[float], list[float]]:
    """(score of each chosen side, score of each rejected side) of the canonical preference rows in `dataset`.

    The rows go through the trainer's own preparation (TRL 1.16 `_prepare_dataset`, the one RewardTrainer.evaluate
    calls, through the run's tokenization cache): the prompt joined to each side, EOS added to plain text, the chat
    template for conversations, and pairs longer than max_length left out, as in training. Every process scores
    every pair (the same forward passes on each rank, which sharded weights need).
    """
    prepared = trainer._prepare_dataset(dataset, trainer.processing_class, trainer.args, "evaluation")
    batch = trainer.args.per_device_eval_batch_size
    with trainer.autocast_smart_context_manager():  # the precision the trainer trains and evaluates in
        chosen = scores(trainer.model, trainer.processing_class, prepared["chosen_ids"], batch)
        rejected = scores(trainer.model, trainer.processing_class, prepared["rejected_ids"], batch)
    return chosen, rejected


def scores(model, tokenizer, token_ids: list[list[int]], batch_size: int) -> list[float]:
    """The model's one output for each token sequence, in batches padded on the right."""
    import torch

    # the sequence-classification head reads the last token that is not padding: the model must know the pad id
    # (a base reloaded under an adapter may not), or it would read the last position instead
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    if config.pad_token_id is None:
        config.pad_token_id = tokenizer.pad_token_id
    was_training, side = model.training, tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = "right"  # as TRL's preference collator pads
    out: list[float] = []
    try:
        for start in range(0, len(token_ids), batch_size):
            chunk = [{"input_ids": ids} for ids in token_ids[start:start + batch_size]]
            inputs = tokenizer.pad(chunk, return_tensors="pt").to(model.device)
            with torch.no_grad():
                out += model(**inputs, use_cache=False).logits[:, 0].float().tolist()
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return out


def score_texts(model, tokenizer, plan: dict, texts: list[str], settings: dict) -> list[dict]:
    """`predict`: each text scored as a whole (the prompt and the response written out as one text), with the end
    token TRL adds to plain text in training. A run trained on conversations scores the text as it is: render the
    conversation with the run's chat template first to score it the way it was trained."""
    eos = tokenizer.eos_token or ""
    ids = [tokenizer(text if text.endswith(eos) else text + eos)["input_ids"] for text in texts]
    found = scores(model, tokenizer, ids, settings["batch_size"])
    return [{"input": text, "score": round(score, 6)} for text, score in zip(texts, found)]
