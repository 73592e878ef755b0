"""The recipe's rewards as TRL's reward functions: `f(prompts, completions, **columns) -> list[float | None]`, one
score per completion, named as the logs show them (`rewards/<name>/mean`). A reward model is loaded here and handed
to TRL with its tokenizer (a reward run's LoRA adapter merged onto its base first); a code reward is imported from its file only here,
at train time, after the recipe opted in (`allow_code`) and the plan recorded the file's sha256."""
from __future__ import annotations

import hashlib
import importlib.util
import re
from pathlib import Path

from runner.errors import Problem, RecipeError

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
    directory or Hub id with one output. TRL names a model reward by its config's `_name_or_path` (the logs'
    rewards/<name>/mean): set to the reward's name, as a function reward is named by its __name__."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from runner.train.models import hub_call

    path, where = Path(reward["path"]), f"{reward['where']}/path"
    if (path / "adapter_config.json").is_file():
        from peft import AutoPeftModelForSequenceClassification

        model = hub_call(where, reward["path"], AutoPeftModelForSequenceClassification.from_pretrained, str(path),
                         num_labels=1).merge_and_unload()
    else:
        model = hub_call(where, reward["path"], AutoModelForSequenceClassification.from_pretrained, reward["path"],
                         num_labels=1)
    tokenizer = hub_call(where, reward["path"], AutoTokenizer.from_pretrained, reward["path"])
    model.config._name_or_path = reward["name"]
    return model.eval(), tokenizer


BUILT_IN = {"exact_match": exact_match, "contains": contains, "numeric": numeric, "regex": regex,
            "format": format_check, "length": length, "python": python_function}


def reward_functions(rewards: list[dict]) -> tuple[list, list]:
    """(reward functions and models in the recipe's order, each one's tokenizer: None for a function or for a
    model TRL loads with its own)."""
    functions, tokenizers = [], []
    for reward in rewards:
        if reward["type"] == "model":
            model, tokenizer = reward_model(reward)
            functions.append(model)
            tokenizers.append(tokenizer)
            continue
        function = BUILT_IN[reward["type"]](reward)
        function.__name__ = reward["name"]  # TRL logs rewards/<__name__>/mean
        functions.append(function)
        tokenizers.append(None)
    return functions, tokenizers
