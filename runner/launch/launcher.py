"""`launch` and `slurm`: the `accelerate launch` command for a machine (or a Slurm job) running a recipe.

Everything goes through Accelerate's own launcher (torchrun underneath); the runner only fills in the
counts and the rendezvous. The recipe is the same on every node: its path is made absolute and the
run checks before loading the model that every rank resolved the same recipe (runner/launch/ranks.py).
"""
from __future__ import annotations

import shlex
import sys
from pathlib import Path

from runner.errors import Problem, RecipeError

CONFIGS = Path(__file__).resolve().parents[2] / "accelerate_configs"
DEFAULT_PORT = 29500


def config_path(name: str | None, gpus: int, nodes: int) -> Path:
    """A config file by path, or by name in accelerate_configs/ (`deepspeed_zero3`); default by GPU count."""
    if name is None:
        name = "single_gpu" if gpus * nodes == 1 else "multi_gpu"
    for candidate in (Path(name), CONFIGS / name, CONFIGS / f"{name}.yaml"):
        if candidate.is_file():
            return candidate.absolute()
    known = sorted(p.stem for p in CONFIGS.glob("*.yaml")) if CONFIGS.is_dir() else []
    raise RecipeError([Problem("--config", f"no Accelerate config named {name!r}",
                               f"a YAML file, or one of: {', '.join(known)}" if known else "give a YAML file")])


def launcher_args(config: Path, gpus: int, nodes: int) -> list[str]:
    """Flags every node gets: the config, counts, and the DeepSpeed JSON as an absolute path.

    An Accelerate YAML names its DeepSpeed JSON relative to the launch directory; passing it absolute
    lets the command run from anywhere.
    """
    args = ["--config_file", str(config), "--num_processes", str(gpus * nodes), "--num_machines", str(nodes)]
    deepspeed_file = _deepspeed_file(config)
    if deepspeed_file is not None:
        args += ["--deepspeed_config_file", str(deepspeed_file)]
    return args


def _deepspeed_file(config: Path) -> Path | None:
    import yaml  # PyYAML comes with accelerate

    from runner.plan.topology import deepspeed_file

    try:
        named = ((yaml.safe_load(config.read_text()) or {}).get("deepspeed_config") or {}).get("deepspeed_config_file")
    except (OSError, yaml.YAMLError, AttributeError) as exc:  # AttributeError: a YAML that is not a mapping
        raise RecipeError([Problem("--config", f"cannot read {config}: {exc}")]) from None
    if not named:
        return None
    found = deepspeed_file(named, str(config))
    if found is None:
        raise RecipeError([Problem("--config", f"{config} names deepspeed_config_file {named}, which does not exist")])
    return found


def runner_args(recipe: str, overrides: list[str], extra: list[str]) -> list[str]:
    args = ["-m", "runner", "run", str(Path(recipe).absolute())]
    for override in overrides:
        args += ["--set", override]
    return args + extra


def launch_command(args) -> list[str]:
    """The accelerate launch command for this machine (`args` from the CLI)."""
    config = config_path(args.config, args.gpus, args.nodes)
    command = [sys.executable, "-m", "accelerate.commands.launch", *launcher_args(config, args.gpus, args.nodes)]
    if args.nodes > 1:
        if args.node_rank is None or args.main_address is None:
            raise RecipeError([Problem("--nodes", f"a {args.nodes}-node launch needs --node-rank (0..{args.nodes - 1}, "
                                                  "this machine's) and --main-address (node 0's address)",
                                       "run the same command on every node with its own --node-rank, or use "
                                       "`python -m runner slurm`")])
        command += ["--machine_rank", str(args.node_rank), "--main_process_ip", args.main_address,
                    "--rdzv_backend", "static", "--same_network"]
    command += ["--main_process_port", str(args.port or DEFAULT_PORT)]
    return command + runner_args(args.recipe, args.overrides, _run_flags(args))


def _run_flags(args) -> list[str]:
    return ["--overwrite"] * bool(args.overwrite) + ["--resume"] * bool(args.resume)


def render(command: list[str]) -> str:
    return " ".join(shlex.quote(part) for part in command)


SLURM_TEMPLATE = """#!/bin/bash
# Written by `python -m runner slurm`: {nodes} node(s) x {gpus} GPU(s), one `accelerate launch` per node.
#   sbatch {script}
# Every node runs the same command on the same recipe path (a shared filesystem is assumed); the
# rendezvous comes from Slurm: node 0 of the allocation is the main address, SLURM_NODEID the machine rank.
#SBATCH --job-name={name}
#SBATCH --nodes={nodes}
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node={gpus}
#SBATCH --output={logs}/%x-%j.out
{optional}
set -euo pipefail

export RECIPE={recipe}
export MAIN_ADDRESS=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export MAIN_PORT=${{MAIN_PORT:-$((20000 + SLURM_JOB_ID % 20000))}}  # per job, so two jobs on a node do not collide
export NUM_MACHINES=$SLURM_NNODES
export NUM_PROCESSES=$((SLURM_NNODES * {gpus}))
export LOGS={logs}/$SLURM_JOB_ID
mkdir -p "$LOGS"
echo "job $SLURM_JOB_ID: $NUM_PROCESSES processes on $NUM_MACHINES node(s), main $MAIN_ADDRESS:$MAIN_PORT"

# One task per node; --kill-on-bad-exit stops every node when one fails instead of leaving them waiting.
# Per-rank logs: $LOGS/node<N>/.../attempt_0/<local rank>/stdout.log and stderr.log (torchrun's --tee).
srun --kill-on-bad-exit=1 --ntasks-per-node=1 --nodes="$SLURM_NNODES" bash -c '
  exec {python} -m accelerate.commands.launch {launcher} \\
    --machine_rank "$SLURM_NODEID" --main_process_ip "$MAIN_ADDRESS" --main_process_port "$MAIN_PORT" \\
    --rdzv_backend static --same_network --tee 3 --log_dir "$LOGS/node$SLURM_NODEID" \\
    {runner}
'
"""


def slurm_script(args, script: Path) -> str:
    config = config_path(args.config, args.gpus_per_node, args.nodes)
    launcher = launcher_args(config, args.gpus_per_node, args.nodes)
    # counts come from Slurm's environment at run time, so resizing the job with sbatch --nodes just works
    launcher[launcher.index("--num_processes") + 1] = '"$NUM_PROCESSES"'
    launcher[launcher.index("--num_machines") + 1] = '"$NUM_MACHINES"'
    optional = [f"#SBATCH --time={args.time}"] * bool(args.time) + \
        [f"#SBATCH --partition={args.partition}"] * bool(args.partition)
    runner = runner_args(args.recipe, args.overrides, _run_flags(args))
    runner[runner.index(str(Path(args.recipe).absolute()))] = '"$RECIPE"'
    return SLURM_TEMPLATE.format(
        nodes=args.nodes, gpus=args.gpus_per_node, script=shlex.quote(str(script)), name=args.job_name,
        logs=shlex.quote(str(Path(args.logs).absolute())), optional="\n".join(optional),
        recipe=shlex.quote(str(Path(args.recipe).absolute())), python=shlex.quote(sys.executable),
        launcher=" ".join(_quote_single(a) for a in launcher), runner=" ".join(_quote_single(a) for a in runner))


def _quote_single(part: str) -> str:
    """Quote for use inside the single-quoted `bash -c '...'` body; "$VARS" stay as they are."""
    if part.startswith('"$'):
        return part
    quoted = shlex.quote(part)
    return quoted.replace("'", "'\"'\"'")


# --- command line ---------------------------------------------------------------------------


def add_parsers(sub, add_set) -> None:
    launch = sub.add_parser("launch", help="print and run the `accelerate launch` command for this machine")
    launch.add_argument("recipe")
    launch.add_argument("--gpus", type=positive_int, default=1, help="processes (GPUs) on this machine")
    _common(launch, add_set)
    launch.add_argument("--node-rank", type=int, help="this machine's rank, 0 on the main node (with --nodes > 1)")
    launch.add_argument("--main-address", help="the main node's address as the others reach it (with --nodes > 1)")
    launch.add_argument("--port", type=positive_int, help=f"rendezvous port (default {DEFAULT_PORT})")
    launch.add_argument("--dry-run", action="store_true", help="print the command, do not run it")
    slurm = sub.add_parser("slurm", help="write a Slurm batch script: one accelerate launcher per node")
    slurm.add_argument("recipe")
    slurm.add_argument("--gpus-per-node", type=positive_int, required=True)
    _common(slurm, add_set)
    slurm.add_argument("--time", help="#SBATCH --time, e.g. 12:00:00")
    slurm.add_argument("--partition", help="#SBATCH --partition")
    slurm.add_argument("--job-name", help="#SBATCH --job-name (default: the recipe file's name)")
    slurm.add_argument("--logs", default="slurm_logs", help="directory for the job's and every rank's logs")
    slurm.add_argument("--output", "-o", help="where to write the script (default: <job name>.sbatch)")


def _common(command, add_set) -> None:
    command.add_argument("--nodes", type=positive_int, default=1, help="machines (default 1)")
    command.add_argument("--config", help="an Accelerate YAML, or a name in accelerate_configs/ such as "
                                          "deepspeed_zero3 (default: single_gpu or multi_gpu)")
    existing = command.add_mutually_exclusive_group()
    existing.add_argument("--overwrite", action="store_true", help="passed on to the run")
    existing.add_argument("--resume", action="store_true", help="passed on to the run")
    add_set(command)


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1."""
    import argparse

    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(text)


def cmd_launch(args) -> int:
    import json
    import os
    import subprocess
    import sys

    from runner.records.invocation import LAUNCHED_BY

    _check_recipe(args)
    command = launch_command(args)
    print(render(command), flush=True)
    if args.dry_run:
        return 0
    # the processes' resume command repeats this launch (with its options), not their own accelerate command
    launched = json.dumps([sys.executable, "-m", "runner", *args.argv[1:]])
    return subprocess.call(command, env={**os.environ, LAUNCHED_BY: launched})


def cmd_slurm(args) -> int:
    _check_recipe(args)
    args.job_name = args.job_name or Path(args.recipe).stem
    script = Path(args.output or f"{args.job_name}.sbatch")
    if script.exists():
        raise RecipeError([Problem("--output", f"{script} already exists; refusing to overwrite it",
                                   "remove it, or name another file with --output")])
    Path(args.logs).mkdir(parents=True, exist_ok=True)  # Slurm does not create the --output directory
    script.write_text(slurm_script(args, script.absolute()))
    script.chmod(0o755)
    print(f"wrote {script}: {args.nodes} node(s) x {args.gpus_per_node} GPU(s); submit with: sbatch {script}")
    return 0


def _check_recipe(args) -> None:
    """Refuse a broken recipe here, before any node starts (the run checks it again with the real topology)."""
    from runner.plan.build import build_plan
    from runner.recipe.load import load_recipe
    gpus = getattr(args, "gpus", None) or args.gpus_per_node
    config = config_path(args.config, gpus, args.nodes)
    build_plan(load_recipe(args.recipe, args.overrides), plan_topology(gpus * args.nodes, str(config), args.nodes))


def plan_topology(world_size: int | None, accelerate_config: str | None, num_machines: int | None = None):
    """`plan --world-size N [--accelerate-config FILE]`: N processes, through the file's engine (default DDP)."""
    import yaml  # PyYAML comes with accelerate

    from runner.plan.topology import Topology, from_accelerate_config

    if accelerate_config is None:
        size = world_size or 1
        return Topology(size, 1, "ddp" if size > 1 else "single")
    try:
        return from_accelerate_config(accelerate_config, world_size, num_machines)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise RecipeError([Problem("--accelerate-config", f"cannot read it: {exc}")]) from None
