"""Trainer callbacks the runner adds to every run."""
from __future__ import annotations

import math

from transformers import TrainerCallback


class StopOnNonFiniteLoss(TrainerCallback):
    """Stop at the first logged NaN or infinite loss: every later step would only spread it.

    `run.py` then reports the step and saves nothing over the last checkpoint.
    """

    def __init__(self):
        self.bad_step: int | None = None
        self.bad_value: float | None = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if isinstance(loss, float) and not math.isfinite(loss) and self.bad_step is None:
            self.bad_step, self.bad_value = state.global_step, loss
            control.should_training_stop = True
        return control
