"""Stage 7: the commands. `run` drives the stages for one training run; eval, predict, merge and quantize read a
finished run through runner/commands/finished.py and never import the training run's code."""
