"""Command line: `python -m runner [run] RECIPE`, `validate`, `plan`, `launch`, `slurm`, `merge RUN_DIR`, `quantize RUN_DIR`, `docs`, ...

A user mistake (RecipeError) prints one report and exits with code 2, never a traceback.
"""
from __future__ import annotations

import argparse
import os
import sys

from runner.launch import launcher as launch
from runner.errors import RecipeError, did_you_mean, environment_fault
from runner.train.resume import RunInterrupted

COMMANDS = ("run", "validate", "plan", "check-data", "eval", "predict", "launch", "slurm", "merge", "quantize",
            "docs")
EXIT_USER_ERROR = 2


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m runner", description=__doc__.splitlines()[0])
    sub = top.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train a recipe (the default command)")
    run.add_argument("recipe")
    _add_set(run)
    existing = run.add_mutually_exclusive_group()
    existing.add_argument("--overwrite", action="store_true",
                          help="replace an earlier run in the output directory (--set output.if_exists=overwrite)")
    existing.add_argument("--resume", action="store_true",
                          help="continue the run in the output directory from its newest complete checkpoint "
                               "(--set output.if_exists=resume)")
    validate = sub.add_parser("validate", help="check recipes against the schema and each other, without torch")
    validate.add_argument("recipes", nargs="+")
    _add_set(validate)
    plan = sub.add_parser("plan", help="print what a recipe will build, with every resolved argument")
    plan.add_argument("recipe")
    plan.add_argument("--world-size", type=launch.positive_int, help="plan for N processes (GPUs) in all (default 1, or the "
                                                           "--accelerate-config file's num_processes)")
    plan.add_argument("--accelerate-config", metavar="FILE", help="plan for the topology of an Accelerate YAML")
    _add_set(plan)
    check = sub.add_parser("check-data", help="read the recipe's data and report problems, leakage and lengths "
                                              "before any model loads")
    check.add_argument("recipe")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    _add_set(check)
    evaluate = sub.add_parser("eval", help="evaluate a finished run with a recipe's evaluation settings, no training")
    evaluate.add_argument("recipe")
    evaluate.add_argument("--model", required=True, metavar="RUN_DIR", help="run directory of the trained model")
    _add_set(evaluate)
    predict = sub.add_parser("predict", help="run a trained model on texts: generated answers, class labels or reward scores")
    predict.add_argument("run_dir")
    source = predict.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", action="append", help="an input text (repeatable)")
    source.add_argument("--input", help="a .txt file (one input per line) or .jsonl file ('text' or 'prompt')")
    predict.add_argument("--max-new-tokens", type=launch.positive_int, help="override the recipe's evaluation.generation setting")
    merge = sub.add_parser("merge", help="merge a run's LoRA/IA3 adapter into its base and save a plain model")
    merge.add_argument("run_dir")
    merge.add_argument("--out", help="output directory, which must not exist (default: RUN_DIR-merged)")
    quantize = sub.add_parser("quantize", help="quantize a trained model to 8 or 4 bits (bitsandbytes) and report "
                                               "size and metrics before and after")
    quantize.add_argument("run_dir")
    quantize.add_argument("--bits", type=int, choices=(4, 8), required=True)
    quantize.add_argument("--out", help="output directory, which must not exist (default: RUN_DIR-<bits>bit)")
    launch.add_parsers(sub, _add_set)
    sub.add_parser("docs", help="print the recipe reference (Markdown) generated from the schema")
    top.allow_abbrev = False
    for command in sub.choices.values():  # `--over` is not `--overwrite`: the resume command repeats options exactly
        command.allow_abbrev = False
    return top


def _add_set(command: argparse.ArgumentParser) -> None:
    command.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                         help="override a recipe value, e.g. --set training.learning_rate=1e-4 (repeatable)")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in COMMANDS and not argv[0].startswith("-"):
        mistyped = unknown_command(argv[0])
        if mistyped:
            print(mistyped, file=sys.stderr)
            return EXIT_USER_ERROR
        argv.insert(0, "run")
    args = parser().parse_args(argv)
    args.argv = [sys.argv[0], *argv]  # as run.json records it (also when main() is called in-process)
    try:
        return COMMAND_FUNCTIONS[args.command](args)
    except RecipeError as err:
        return report(err, args)
    except RunInterrupted as exc:  # a checkpoint was saved; the message says how to resume
        if os.environ.get("RANK", "0") == "0":  # every rank stopped at the same step: one message is enough
            print(exc, file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # disk full, read-only filesystem, a symlink loop: the machine's fault, not a bug
        fault = environment_fault(exc)
        if fault is None:
            raise
        return report(fault, args)


def report(err: RecipeError, args) -> int:
    if err.source is None and getattr(args, "recipe", None):
        err.source = args.recipe  # data, model and output problems are still about this recipe
    print(err.render(), file=sys.stderr)
    return EXIT_USER_ERROR


def unknown_command(word: str) -> str | None:
    """A first word that is neither a command nor a recipe file: say so, instead of running it as a recipe."""
    from pathlib import Path

    if Path(word).exists() or word.endswith((".json", "/")) or "/" in word:
        return None  # a recipe path (a missing one is reported by `run` with the path)
    hint = did_you_mean(word, COMMANDS) or f"the commands are: {', '.join(COMMANDS)}"
    return f"'{word}' is neither a command nor a recipe file\n      hint: {hint}"


def cmd_validate(args) -> int:
    from runner.plan.build import build_plan
    from runner.recipe.load import load_recipe

    failed = 0
    for path in args.recipes:
        try:
            build_plan(load_recipe(path, args.overrides))
            print(f"ok: {path}")
        except RecipeError as err:
            print(err.render(), file=sys.stderr)
            failed += 1
    return EXIT_USER_ERROR if failed else 0


def cmd_plan(args) -> int:
    from runner.plan.build import build_plan, to_json
    from runner.recipe.load import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    print(to_json(build_plan(recipe, launch.plan_topology(args.world_size, args.accelerate_config))))
    return 0


def cmd_run(args) -> int:
    from runner.plan.build import build_plan
    from runner.recipe.load import load_recipe
    from runner.commands.run import run

    overrides = args.overrides + (["output.if_exists=overwrite"] if args.overwrite else []) \
        + (["output.if_exists=resume"] if args.resume else [])
    from runner.plan.topology import from_environment

    plan = build_plan(load_recipe(args.recipe, overrides), from_environment())
    if args.resume:
        require_run_to_resume(plan)
    run(plan, args.argv)
    return 0


def require_run_to_resume(plan: dict) -> None:
    """--resume means a run exists to continue; the recipe's `if_exists: resume` also starts one where none is."""
    from pathlib import Path

    from runner.records.claim import CLAIM
    from runner.errors import Problem
    from runner.records.outputs import MANIFEST

    run_dir = Path(plan["output_dir"])
    if not (run_dir / MANIFEST).is_file() and not (run_dir / CLAIM).exists():  # a run starting there: "in use"
        where = "does not exist" if not run_dir.exists() else f"holds no {MANIFEST}"
        raise RecipeError([Problem("/output/dir", f"--resume: there is no run to continue: {run_dir} {where}",
                                   "resume with the command the interrupted run printed (its run.json keeps it as "
                                   "resume_command, with every --set it was started with), or drop --resume to "
                                   "start a new run")])


def cmd_check_data(args) -> int:
    import json

    from runner.plan.build import build_plan
    from runner.commands.check_data import check_data
    from runner.data.check import render
    from runner.recipe.load import load_recipe

    report = check_data(build_plan(load_recipe(args.recipe, args.overrides)))
    print(json.dumps(report, indent=2, ensure_ascii=False) if args.json else render(report))
    return 0


def cmd_eval(args) -> int:
    import json
    from pathlib import Path

    from runner.commands.inference import evaluate_run
    from runner.plan.build import build_plan
    from runner.recipe.load import load_recipe

    results = evaluate_run(build_plan(load_recipe(args.recipe, args.overrides)), Path(args.model).absolute())
    print(json.dumps(results, indent=2, default=str))
    return 0


def cmd_predict(args) -> int:
    import json
    from pathlib import Path

    from runner.commands.inference import predict, read_inputs

    texts = args.text or read_inputs(Path(args.input))
    if not all(text.strip() for text in texts):
        from runner.errors import Problem

        raise RecipeError([Problem("", "an input is empty (--text '', or an empty field in --input): there is "
                                       "nothing to answer, classify or score",
                                   "give the text to run the model on, e.g. --text 'What is the capital of France?'")])
    for result in predict(Path(args.run_dir).absolute(), texts, args.max_new_tokens):
        print(json.dumps(result, ensure_ascii=False))
    return 0


def cmd_merge(args) -> int:
    import json
    from pathlib import Path

    from runner.commands.merge import merge

    record = merge(Path(args.run_dir).absolute(), Path(args.out) if args.out else None)
    print(f"{record['note']} -> {record['output_dir']}", file=sys.stderr)
    print(json.dumps(record, indent=2))
    return 0


def cmd_quantize(args) -> int:
    import json
    from pathlib import Path

    from runner.commands.quantize import quantize

    record = quantize(Path(args.run_dir).absolute(), args.bits, Path(args.out) if args.out else None)
    print(json.dumps(record, indent=2, default=str))
    return 0


def cmd_docs(args) -> int:
    from runner.recipe.docs import reference

    print(reference(), end="")
    return 0


COMMAND_FUNCTIONS = {"run": cmd_run, "validate": cmd_validate, "plan": cmd_plan, "check-data": cmd_check_data,
                     "eval": cmd_eval,
                     "predict": cmd_predict, "launch": launch.cmd_launch, "slurm": launch.cmd_slurm,
                     "merge": cmd_merge, "quantize": cmd_quantize, "docs": cmd_docs}

if __name__ == "__main__":
    sys.exit(main())
