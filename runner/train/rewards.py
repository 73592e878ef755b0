"""The recipe's rewards as TRL's reward functions: `f(prompts, completions, **columns) -> list[float | None]`, one
score per completion, named as the logs show them (`rewards/<name>/mean`). A reward model is loaded here (a reward
run's LoRA adapter merged onto its base first) and scores as TRL's RewardTrainer trained it (`model_scorer`); a code
reward is imported from its file only here, at train time, after the recipe opted in (`allow_code`) and the plan
recorded the file's sha256."""
from __future__ import annotations

import hashlib
import importlib.util
import re
from pathlib import Path

from runner.errors import Problem, RecipeError
from runner.plan import adapter_runs

NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def completion_text(completion) -> str:
    """A completion as text: a conversational one is its turns' contents."""
    if isinstance(completion, list):
        return "".join(turn.get("content") or "" for turn in completion)
    return completion


def _references(kwargs: dict, column: str | None, count: int) -> list:
    return list(kwargs.get(column) or [None] * count) if column else [None] * count


def exact_match(reward: dict):
    def score(prompts, completions, **kwargs):
        references = _references(kwargs, reward["column"], len(completions))
        return [None if ref is None else float(completion_text(c).strip() == str(ref).strip())
                for c, ref in zip(completions, references)]
    return score


def contains(reward: dict):
    def score(prompts, completions, **kwargs):
        references = _references(kwargs, reward["column"], len(completions))
        return [None if ref is None else float(str(ref).strip() in completion_text(c))
                for c, ref in zip(completions, references)]
    return score


def last_number(text: str) -> float | None:
    found = NUMBER.findall(text)
    try:
        return float(found[-1].replace(",", "")) if found else None
    except ValueError:
        return None


def numeric(reward: dict):
    def score(prompts, completions, **kwargs):
        references = _references(kwargs, reward["column"], len(completions))
        out = []
        for completion, ref in zip(completions, references):
            wanted = last_number(str(ref)) if ref is not None else None
            said = last_number(completion_text(completion))
            out.append(None if wanted is None else float(said is not None and abs(said - wanted) <= reward["tolerance"]))
        return out
    return score


def regex(reward: dict):
    pattern = re.compile(reward["pattern"])

    def score(prompts, completions, **kwargs):
        references = _references(kwargs, reward["column"], len(completions))
        out = []
        for completion, ref in zip(completions, references):
            found = pattern.search(completion_text(completion))
            if reward["column"] is None:
                out.append(float(found is not None))
            elif ref is None:
                out.append(None)
            else:
                said = (found.group(1) if found and found.groups() else found.group(0) if found else None)
                out.append(float(said is not None and said.strip() == str(ref).strip()))
        return out
    return score


def format_check(reward: dict):
    pattern = re.compile(reward["pattern"], re.DOTALL)

    def score(prompts, completions, **kwargs):
        return [float(pattern.fullmatch(completion_text(c).strip()) is not None) for c in completions]
    return score


def length(reward: dict):
    limit = reward["max_chars"]

    def score(prompts, completions, **kwargs):
        return [-max(0, len(completion_text(c)) - limit) / limit for c in completions]
    return score


def python_function(reward: dict):
    """The recipe's function from its file (the recipe opted in with allow_code: true)."""
    path = Path(reward["file"])
    found = hashlib.sha256(path.read_bytes()).hexdigest()
    if found != reward["sha256"]:  # the code that runs is the code the plan recorded
        raise RecipeError([Problem(f"{reward['where']}/file", f"{path} changed after the plan recorded it (sha256 "
                                   f"{reward['sha256'][:12]}..., now {found[:12]}...)", "run the recipe again")])
    spec = importlib.util.spec_from_file_location(f"recipe_reward_{reward['name']}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    function = getattr(module, reward["function"])

    def score(prompts, completions, **kwargs):
        return list(function(prompts=prompts, completions=completions, **kwargs))
    return score


def reward_model(reward: dict):
    """(the reward model, its tokenizer): a reward run's LoRA adapter merged onto its base, else a full model
    directory or Hub id with one output."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from runner.train.models import hub_call

    path, where = Path(reward["path"]), f"{reward['where']}/path"
    run = adapter_runs.run_plan(reward["path"])
    if run is not None:  # a reward run's adapter
        from runner.train.models import load_with_adapter

        # on the base it was trained on, as `eval` of that run loads it (a GGUF file, kept random weights, a chain)
        model = load_with_adapter(path, {**run["model"], "task": run["task"]},
                                  run["recipe"]["training"]["seed"]).merge_and_unload()
    elif (path / "adapter_config.json").is_file():
        from peft import AutoPeftModelForSequenceClassification

        model = hub_call(where, reward["path"], AutoPeftModelForSequenceClassification.from_pretrained, str(path),
                         num_labels=1).merge_and_unload()
    else:
        model = hub_call(where, reward["path"], AutoModelForSequenceClassification.from_pretrained, reward["path"],
                         num_labels=1)
    tokenizer = hub_call(where, reward["path"], AutoTokenizer.from_pretrained, reward["path"])
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.pad_token_id is not None:  # where the score is read: the last token before padding
        model.config.pad_token_id = tokenizer.pad_token_id
    return model.eval(), tokenizer


def model_scorer(reward: dict):
    """A reward model as a reward function that scores each prompt + completion tokenized exactly as TRL's
    RewardTrainer tokenized its training pairs: plain text with the tokenizer's special tokens and the EOS token it
    appends to every response; a conversation through the chat template. GRPOTrainer's own scoring of a model
    reward (TRL 1.16) joins plain text without that EOS token or the special tokens, so the score is read at a
    position training never scored: on the RLHF chain's reward model it ranked wrong reversals above right ones, and
    GRPO learned to write them."""
    import torch
    from accelerate import PartialState

    from runner import compat

    with compat.whole_model_loading():  # scored outside any DeepSpeed engine: whole on each rank, even under ZeRO-3
        model, tokenizer = reward_model(reward)
    eos = tokenizer.eos_token or ""  # RewardTrainer appends it when the tokenizer has one

    def score(prompts, completions, **kwargs):
        device = PartialState().device
        if model.device != device:
            model.to(device)
        rows = [scored_ids(tokenizer, prompt, completion, eos) for prompt, completion in zip(prompts, completions)]
        width = max(len(ids) for ids in rows)
        input_ids = torch.full((len(rows), width), tokenizer.pad_token_id or 0, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for index, ids in enumerate(rows):  # right padding: the score is read at each row's last real token
            input_ids[index, :len(ids)] = torch.tensor(ids)
            attention_mask[index, :len(ids)] = 1
        with torch.inference_mode():
            logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
        return logits[:, 0].float().tolist()

    score.__name__ = reward["name"]
    return score


def scored_ids(tokenizer, prompt, completion, eos: str) -> list[int]:
    """The ids RewardTrainer would make of this prompt and response (trl/trainer/reward_trainer.py)."""
    if isinstance(prompt, list):  # a conversation: the template renders the whole of it
        return list(tokenizer.apply_chat_template(prompt + completion, tokenize=True, return_dict=True)["input_ids"])
    text = prompt + completion
    if eos and not text.endswith(eos):
        text += eos
    return tokenizer(text=text)["input_ids"]


BUILT_IN = {"exact_match": exact_match, "contains": contains, "numeric": numeric, "regex": regex,
            "format": format_check, "length": length, "python": python_function}


def reward_functions(rewards: list[dict]) -> list:
    """The reward functions in the recipe's order (a reward model as a function too: model_scorer)."""
    functions = []
    for reward in rewards:
        if reward["type"] == "model":
            functions.append(model_scorer(reward))
            continue
        function = BUILT_IN[reward["type"]](reward)
        function.__name__ = reward["name"]  # TRL logs rewards/<__name__>/mean
        functions.append(function)
    return functions
