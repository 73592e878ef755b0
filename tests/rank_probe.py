"""Run a recipe through the runner under `accelerate launch` and record what each rank trained on.

    accelerate launch ... tests/rank_probe.py RECIPE PROBE_DIR [--set-on-rank R KEY=VALUE]

The run is the runner's own (`build_plan` with the launch environment's topology, `prepare`, `train`);
the only addition is a wrapper around `trainer.training_step` that notes the unpadded token ids of
every row this rank stepped on (online RL: the prompts; and each generation it ran) and the generated answers it
got, written to PROBE_DIR/rank<R>.json with the world size.
`--set-on-rank` gives one rank a different recipe value (a node whose copy of the recipe differs).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from runner.__main__ import main as runner_main


def record(trainer, seen: list) -> None:
    original = trainer.training_step

    def training_step(model, inputs, *args, **kwargs):
        if isinstance(inputs, list):  # online RL (GRPO, RLOO): the rows whose prompts this rank generates for
            seen.extend(row["prompt"] for row in inputs)
            return original(model, inputs, *args, **kwargs)
        mask = inputs["attention_mask"].bool()
        seen.extend(row[keep].tolist() for row, keep in zip(inputs["input_ids"], mask))
        return original(model, inputs, *args, **kwargs)

    trainer.training_step = training_step


def record_generations(trainer, generations: list) -> None:
    """Online RL: per generation this rank ran (TRL's `_generate`), the prompts it generated for (one entry per
    completion), the number of completions, the prompt tokens and the generated tokens."""
    if not hasattr(trainer, "_generate"):
        return
    original = trainer._generate

    def _generate(prompts):
        result = original(prompts)
        prompt_ids, completion_ids = result[0], result[1]
        generations.append({"prompts": list(prompts), "completions": len(completion_ids),
                            "prompt_tokens": sum(len(ids) for ids in prompt_ids),
                            "tokens": sum(len(ids) for ids in completion_ids), "training": trainer.model.training})
        return result

    trainer._generate = _generate


def record_answers() -> list:
    """The answers each call of the runner's generate_across_ranks returned (before and after training)."""
    from runner.evaluate import measure as evaluation

    calls, original = [], evaluation.generate_across_ranks

    def generate_across_ranks(*args, **kwargs):
        calls.append(original(*args, **kwargs))
        return calls[-1]

    evaluation.generate_across_ranks = generate_across_ranks
    return calls


def engine(trainer) -> dict:
    """Which engine really held the weights: Accelerate's distributed type and how many parameters this rank
    holds as shards (FSDP2 DTensors, ZeRO-3 partitions) rather than whole tensors."""
    from torch.distributed.tensor import DTensor

    params = list(trainer.model.parameters())
    sharded = [isinstance(p, DTensor) or hasattr(p, "ds_id") and p.numel() == 0 for p in params]
    four_bit = [type(p).__name__ == "Params4bit" for p in params]
    return {"distributed_type": str(trainer.accelerator.distributed_type), "sharded_params": sum(sharded),
            "params": len(params), "params_4bit": sum(four_bit),
            "sharded_4bit": sum(s and f for s, f in zip(sharded, four_bit))}


def probe(recipe: str, out: Path) -> int:
    from runner.plan.build import build_plan
    from runner.recipe.load import load_recipe
    from runner.commands.run import prepare, train
    from runner.plan.topology import from_environment

    plan = build_plan(load_recipe(recipe), from_environment())
    prepared = prepare(plan)
    seen: list = []
    generations: list = []
    record(prepared.trainer, seen)
    record_generations(prepared.trainer, generations)
    rank, world = prepared.state.process_index, prepared.state.num_processes
    rows = prepared.trainer.train_dataset
    dataset = ([list(ids) for ids in rows["input_ids"]] if "input_ids" in rows.column_names
               else list(rows["prompt"]))  # online RL: the prompts
    out.mkdir(parents=True, exist_ok=True)
    answers = record_answers()
    manifest = train(prepared.plan, prepared, ["rank_probe"])
    (out / f"rank{rank}.json").write_text(json.dumps({"world_size": world, "seen": seen, "dataset": dataset,
                                                      "status": manifest["status"], "answers": answers,
                                                      "generations": generations,
                                                      "engine": engine(prepared.trainer)}))
    return 0


if __name__ == "__main__":
    recipe, out = sys.argv[1], Path(sys.argv[2])
    if "--set-on-rank" in sys.argv:  # through the runner's own command line, exactly as a user's run
        i = sys.argv.index("--set-on-rank")
        extra = ["--set", sys.argv[i + 2]] if os.environ.get("RANK") == sys.argv[i + 1] else []
        sys.exit(runner_main(["run", recipe, *extra]))
    sys.exit(probe(recipe, out))
