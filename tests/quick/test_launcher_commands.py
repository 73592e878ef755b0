"""The launch and slurm commands (runner.launch.launcher): the accelerate command and Slurm script they print, and
their mistakes as exit 2. `python -m runner launch|slurm|plan` in a fresh process; nothing is launched.
"""
from __future__ import annotations

import subprocess
import sys

from conftest import ROOT, base_recipe, write_jsonl
from commandline import cli, slurm_script

CONFIGS = ROOT / "accelerate_configs"


def test_launch_prints_the_accelerate_command(tmp_path, recipe_file):
    write_jsonl(tmp_path / "train.jsonl", [{"text": "x"}])
    path = recipe_file(base_recipe(tmp_path))
    result = cli("launch", str(path), "--gpus", "4", "--config", "deepspeed_zero3", "--dry-run",
                 "--set", "training.seed=7", cwd=tmp_path)  # from any directory
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / "deepspeed_zero3.yaml"),
        "--num_processes", "4", "--num_machines", "1",
        "--deepspeed_config_file", str(CONFIGS / "deepspeed" / "zero3.json"), "--main_process_port", "29500",
        "-m", "runner", "run", str(path), "--set", "training.seed=7"]
    two_nodes = cli("launch", str(path), "--gpus", "8", "--nodes", "2", "--node-rank", "1", "--main-address",
                    "10.1.2.3", "--port", "6000", "--dry-run").stdout.split()
    assert two_nodes[two_nodes.index("--num_processes") + 1] == "16"
    assert two_nodes[two_nodes.index("--config_file") + 1].endswith("multi_gpu.yaml")
    for flag, value in (("--num_machines", "2"), ("--machine_rank", "1"), ("--main_process_ip", "10.1.2.3"),
                        ("--main_process_port", "6000")):
        assert two_nodes[two_nodes.index(flag) + 1] == value


def test_launch_mistakes_exit_2(tmp_path, recipe_file):
    write_jsonl(tmp_path / "train.jsonl", [{"text": "x"}])
    path = recipe_file(base_recipe(tmp_path))
    result = cli("launch", str(path), "--gpus", "8", "--nodes", "2", "--dry-run")
    assert result.returncode == 2 and "--nodes: a 2-node launch needs --node-rank" in result.stderr
    result = cli("launch", str(path), "--config", "zero9", "--dry-run")
    assert result.returncode == 2 and "no Accelerate config named 'zero9'" in result.stderr
    assert "deepspeed_zero3_offload" in result.stderr  # the hint lists the shipped ones
    bad = recipe_file(base_recipe(tmp_path, training={"optim": "adamw_8bit"}), "bad.json")
    result = cli("launch", str(bad), "--gpus", "2", "--config", "deepspeed_zero3_offload", "--dry-run")
    assert result.returncode == 2 and "/training/optim" in result.stderr  # refused before any node starts


def test_slurm_script_sets_the_rendezvous_fromslurm_script(tmp_path, recipe_file):
    write_jsonl(tmp_path / "train.jsonl", [{"text": "x"}])
    recipe_file(base_recipe(tmp_path))
    text = slurm_script(tmp_path, "--time", "02:00:00", "--partition", "gpu", "--config", "fsdp2").read_text()
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=1",
                 "#SBATCH --time=02:00:00", "#SBATCH --partition=gpu", "#SBATCH --job-name=recipe",
                 f"export RECIPE={tmp_path / 'recipe.json'}",
                 'export MAIN_ADDRESS=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
                 "export NUM_PROCESSES=$((SLURM_NNODES * 1))"):
        assert line in text.splitlines(), line
    assert text.count("srun ") == 1 and text.count("accelerate.commands.launch") == 1  # one launcher per node
    for flag in ('--machine_rank "$SLURM_NODEID"', '--main_process_ip "$MAIN_ADDRESS"',
                 '--main_process_port "$MAIN_PORT"', '--num_processes "$NUM_PROCESSES"',
                 '--num_machines "$NUM_MACHINES"', '--log_dir "$LOGS/node$SLURM_NODEID"', "--tee 3",
                 f"--config_file {CONFIGS / 'fsdp2.yaml'}", '-m runner run "$RECIPE"'):
        assert flag in text, flag
    assert (tmp_path / "logs").is_dir()  # Slurm does not create the --output directory itself
    assert subprocess.run(["bash", "-n", str(tmp_path / "job.sbatch")]).returncode == 0


def test_broken_accelerate_yaml_and_existing_slurm_script_exit_2(tmp_path, recipe_file):
    write_jsonl(tmp_path / "train.jsonl", [{"text": "x"}])
    path = recipe_file(base_recipe(tmp_path))
    (tmp_path / "bad.yaml").write_text("distributed_type: [DEEPSPEED\n")
    result = cli("plan", str(path), "--world-size", "2", "--accelerate-config", str(tmp_path / "bad.yaml"))
    assert result.returncode == 2 and "--accelerate-config: cannot read it" in result.stderr
    result = cli("launch", str(path), "--config", str(tmp_path / "bad.yaml"), "--dry-run")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    script = tmp_path / "mine.sbatch"
    script.write_text("#!/bin/bash\n# my hand-edited job\n")
    result = cli("slurm", str(path), "--nodes", "2", "--gpus-per-node", "1", "-o", str(script), cwd=tmp_path)
    assert result.returncode == 2 and "already exists" in result.stderr
    assert script.read_text() == "#!/bin/bash\n# my hand-edited job\n"
