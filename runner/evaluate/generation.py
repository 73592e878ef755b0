"""Generated answers: prompts read from each generative format's rows, greedy (or configured) decoding, split across
ranks so every rank generates its share."""
from __future__ import annotations

from runner.data import tool_calls


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
    """The conversation up to its last assistant turn is the prompt; that turn is the reference. A conversation that
    ends with a tool call has no text reference: skipped."""
    turns = row["messages"]
    if not turns or turns[-1]["role"] != "assistant" or turns[-1].get("tool_calls"):
        return None
    ids = tokenizer.apply_chat_template(tool_calls.for_template(turns[:-1]), tokenize=True, add_generation_prompt=True,
                                        return_dict=True,
                                        tools=tool_calls.tools_for_template(row.get("tools")))["input_ids"]
    return ids, turns[-1]["content"]


def preference(row: dict, tokenizer):
    """With an explicit prompt, the chosen response is the reference answer; implicit-prompt rows are skipped."""
    if not row.get("prompt"):
        return None
    return prompt_completion({"prompt": row["prompt"], "completion": row["chosen"]}, tokenizer)


def prompt_only(row: dict, tokenizer):
    """The prompt, and the reference answer where the row has one (rows without are skipped)."""
    if row.get("answer") is None:
        return None
    return prompt_completion({"prompt": row["prompt"], "completion": row["answer"] if not isinstance(row["prompt"], list)
                              else [{"role": "assistant", "content": row["answer"]}]}, tokenizer)


# Trained format -> (prompt token ids, reference answer) of a row: every generative format has one.
PROMPT_AND_ANSWER = {"prompt_completion": prompt_completion, "messages": messages, "preference": preference,
                     "prompt_only": prompt_only}


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
