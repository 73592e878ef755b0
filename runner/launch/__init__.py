"""Stage 3: where the run lands: the machine probed, the plan's per-machine settings decided by the rules in
runner/plan/decisions.py, every rank agreeing, and the accelerate / Slurm command lines that start a run."""
