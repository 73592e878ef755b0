"""Run a recipe through the runner's command line under `accelerate launch`, with rank 1 receiving SIGTERM at the
end of step 3 (as one node of a preempted job would):

    accelerate launch ... tests/signal_probe.py RECIPE
"""
from __future__ import annotations

import os
import signal
import sys

from transformers import TrainerCallback

from runner.train import session
from runner.__main__ import main

SIGNAL_AT_STEP = 3


class TerminateRankOne(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == SIGNAL_AT_STEP and os.environ.get("RANK") == "1":
            os.kill(os.getpid(), signal.SIGTERM)


def build_trainer(*args, **kwargs):
    trainer = original(*args, **kwargs)
    trainer.add_callback(TerminateRankOne())
    return trainer


original, session.build_trainer = session.build_trainer, build_trainer  # the trainer every run builds

if __name__ == "__main__":
    sys.exit(main(["run", sys.argv[1]]))
