"""The recipe's rewards (tasks `grpo`, `rloo`), checked before anything loads: the fields they compare with, their
patterns, the reward run or model they name, the function a code reward names in its file; and the generation
batch TRL will build, with the divisibility it would refuse later. Listed in the plan with their names and weights,
a code reward with its file's sha256."""
from __future__ import annotations

import ast
import hashlib
import json
import math
import re
from pathlib import Path

from runner.errors import Problem
from runner.plan.evaluation import has_eval_data
from runner.plan.methods import METHODS
from runner.plan.tasks import Task

COMPARED = ("exact_match", "contains", "numeric")  # rewards that compare with a reference field (or regex's column)


def reward_names(rewards: list[dict]) -> list[str]:
    """Each reward's name: its own, else its type, numbered from the second of a type on (exact_match_2)."""
    names, seen = [], {}
    for reward in rewards:
        if reward.get("name"):
            names.append(reward["name"])
            continue
        seen[reward["type"]] = seen.get(reward["type"], 0) + 1
        names.append(reward["type"] if seen[reward["type"]] == 1 else f"{reward['type']}_{seen[reward['type']]}")
    return names


def check_rewards(doc: dict, task: Task, fmt: str) -> list[Problem]:
    rewards = doc.get("rewards")
    if not task.rewarded:
        return [Problem("/rewards", f"task '{task.name}' trains on no rewards",
                        "rewards apply to tasks grpo and rloo; remove them")] if rewards else []
    if not rewards:
        return [Problem("/rewards", f"task '{task.name}' needs rewards to train towards",
                        'e.g. "rewards": [{"type": "exact_match"}], with each row\'s reference answer in the '
                        "format's `answer` field (data.columns.answer names its column)")]
    spec = task.formats.get(fmt)
    fields = spec.fields + spec.optional if spec else ()
    problems = []
    for index, reward in enumerate(rewards):
        problems += CHECKS.get(reward["type"], _no_check)(reward, f"/rewards/{index}", fields)
    names = reward_names(rewards)
    problems += [Problem(f"/rewards/{i}/name", f"another reward is also named '{name}'", "give each its own name")
                 for i, name in enumerate(names) if name in names[:i]]
    return problems


def _no_check(reward: dict, where: str, fields: tuple) -> list[Problem]:
    return []


def _column(reward: dict, where: str, fields: tuple) -> list[Problem]:
    column = reward.get("column")
    if column is None or column in fields and column != "prompt":
        return []
    return [Problem(f"{where}/column", f"the rows have no field '{column}' (their fields: {', '.join(fields)})",
                    "name the reference answer's column in data.columns.answer, and leave column at 'answer'")]


def _pattern(reward: dict, where: str, fields: tuple) -> list[Problem]:
    try:
        re.compile(reward["pattern"])
    except re.error as exc:
        return [Problem(f"{where}/pattern", f"not a regular expression: {exc}")]
    return _column(reward, where, fields)


def _model(reward: dict, where: str, fields: tuple) -> list[Problem]:
    """A reward run's directory (its plan says task `reward`), or a model directory, or a Hub id (checked when it
    loads: offline, nothing more can be known)."""
    path = Path(reward["path"])
    if not path.is_absolute():  # a Hub id: resolve_one keeps local paths absolute
        return []
    if not path.is_dir():
        return [Problem(f"{where}/path", f"no such directory: {path}", "name a reward run's output directory, or "
                        "a sequence-classification model's")]
    plan_file = path / "plan.json"
    if plan_file.is_file():
        kind = json.loads(plan_file.read_text()).get("task")
        if kind != "reward":
            return [Problem(f"{where}/path", f"{path} is the run directory of a '{kind}' run, not a reward model",
                            "name the output directory of a run with task 'reward'")]
        if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
            return [Problem(f"{where}/path", f"the reward run in {path} saved no model (it did not finish)",
                            "run it to the end first, or name its last checkpoint")]
        return []
    if not (path / "config.json").is_file():
        return [Problem(f"{where}/path", f"{path} holds no model (no config.json)")]
    return []


def _python(reward: dict, where: str, fields: tuple) -> list[Problem]:
    """The file parses and defines the function at its top level (read, never run, here)."""
    path = Path(reward["file"])
    if not path.is_file():
        return [Problem(f"{where}/file", f"file not found: {path}")]
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (SyntaxError, UnicodeDecodeError, ValueError) as exc:
        return [Problem(f"{where}/file", f"{path} is not valid Python: {exc}")]
    defined = [node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]
    if reward["function"] not in defined:
        return [Problem(f"{where}/function", f"{path} defines no function '{reward['function']}' at its top level",
                        f"its functions: {', '.join(defined)}" if defined else "define it there")]
    return []


CHECKS = {"exact_match": _column, "contains": _column, "numeric": _column, "regex": _pattern, "format": _pattern,
          "model": _model, "python": _python}


def rewards_spec(doc: dict) -> list[dict] | None:
    """The rewards as the trainer gets them: each with its name (the logs' rewards/<name>), weight and settings; a
    code reward with the sha256 of its file (recorded, so a run says which code scored it)."""
    rewards = doc.get("rewards")
    if not rewards:
        return None
    listed = []
    for index, (name, reward) in enumerate(zip(reward_names(rewards), rewards)):
        entry = {**reward, "name": name, "where": f"/rewards/{index}"}  # where a problem loading it is said
        if reward["type"] == "python":
            entry["sha256"] = hashlib.sha256(Path(reward["file"]).read_bytes()).hexdigest()
        listed.append(entry)
    return listed


def check_reference(doc: dict) -> list[Problem]:
    """With beta > 0 TRL keeps a reference model: with an adapter, the base with the adapter off; with full
    fine-tuning it reloads the model from model.name_or_path, which has no weights for a random init and reads no
    GGUF file nor merges an adapter run: refused rather than compared with the wrong model."""
    if doc["training"]["beta"] == 0 or METHODS[doc["peft"]["method"]].adapter:
        return []
    model = doc["model"]
    not_the_start = {"a randomly initialized model": model["init"] == "random",
                     "a model read from a GGUF file": bool(model["gguf_file"]),
                     "an adapter run merged as it loads": model["adapter"] == "merge"}
    what = next((text for text, applies in not_the_start.items() if applies), None)
    if what:
        return [Problem("/training/beta", f"beta > 0 keeps a reference model, which TRL reloads from "
                        f"model.name_or_path: for {what} that is not the start model",
                        "train an adapter (peft: the base with the adapter off is the reference), or set beta to 0")]
    return []


# --- the generation batch -------------------------------------------------------------------


def generation_batch(doc: dict, world: int) -> dict:
    """Prompts and completions per generation, as TRL's config derives them (GRPOConfig.__post_init__)."""
    training = doc["training"]
    per_step = training["per_device_train_batch_size"] * world
    size, steps = training["generation_batch_size"], training["steps_per_generation"]
    if size is None:
        steps = steps or training["gradient_accumulation_steps"]
        size = per_step * steps
    else:
        steps = size // per_step
    generations = training["num_generations"]
    shares = f" ({size // world} generated by each of {world} processes)" if world > 1 else ""
    return {"completions_per_generation": size, "prompts_per_generation": size // generations,
            "num_generations": generations, "steps_per_generation": steps,
            "note": f"{size // generations} prompts x {generations} completions each = {size} completions per "
                    f"generation{shares}, trained on over {steps} micro-step(s) of {per_step}"}


def rl_steps(batch: dict, doc: dict) -> dict:
    """The batch section's steps per epoch (and total steps), counted as TRL's sampler makes them, not one row per
    example: each generation takes prompts_per_generation whole prompts (the rows beyond a multiple of them are
    dropped) and yields num_generations completions of each, trained on over steps_per_generation micro-steps,
    num_iterations times. Per process: (rows // prompts per generation) x steps_per_generation x num_iterations
    micro-steps, an optimizer step per gradient_accumulation_steps of them (transformers counts a last partial
    group as a step). E.g. 96 prompts, 8 completions per process on 2 processes, 4 each: 4 prompts per generation,
    24 steps per epoch (the plain row count would say 96 / 16 = 6)."""
    if batch.get("steps_per_epoch") is None:
        return batch
    training, generation = doc["training"], batch["generation"]
    micro = (batch["train_rows"] // generation["prompts_per_generation"]) * generation["steps_per_generation"] \
        * training["num_iterations"]
    steps = max(math.ceil(micro / training["gradient_accumulation_steps"]), 1)
    batch = {**batch, "steps_per_epoch": steps}
    if training["max_steps"] <= 0:
        batch["total_steps"] = math.ceil(steps * training["num_train_epochs"])
    return batch


def check_generation(doc: dict, world: int) -> list[Problem]:
    """What TRL's config would refuse at launch, said now with the keys to change."""
    training = doc["training"]
    per_step = training["per_device_train_batch_size"] * world
    size, generations = training["generation_batch_size"], training["num_generations"]
    if size is not None and training["steps_per_generation"] is not None:
        return [Problem("/training/steps_per_generation", "set either generation_batch_size or "
                        "steps_per_generation, not both")]
    if size is not None and size % per_step:
        return [Problem("/training/generation_batch_size", f"{size} is not a multiple of the global batch "
                        f"({training['per_device_train_batch_size']} per device x {world} process(es) = {per_step})")]
    batch = generation_batch(doc, world)
    problems = []
    if batch["completions_per_generation"] % generations:
        problems.append(Problem("/training/num_generations", f"{batch['completions_per_generation']} completions per "
                                f"generation do not split into whole groups of {generations}",
                                "make per_device_train_batch_size x processes x steps_per_generation (or "
                                "generation_batch_size) a multiple of num_generations"))
    evaluated = training["num_generations_eval"] or generations
    if has_eval_data(doc) and (training["per_device_eval_batch_size"] * world) % evaluated:
        problems.append(Problem("/training/per_device_eval_batch_size", f"{training['per_device_eval_batch_size']} "
                                f"x {world} process(es) is not a multiple of the {evaluated} completions per prompt "
                                "evaluated", "make it a multiple of num_generations_eval (or num_generations)"))
    return problems
