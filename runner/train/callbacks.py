"""The trainer callbacks the runner adds to runs: a non-finite loss stops the run, checkpoints are marked whole,
a signal stops every rank at the same step, and work waits for the start of train() where it must."""
from __future__ import annotations

import math
import signal
from pathlib import Path

from transformers import TrainerCallback

from runner.records.checkpoints import COMPLETE, file_records
from runner.records.outputs import versions, write_json
from runner.train import resume


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


class MarkComplete(TrainerCallback):
    """Write the completeness marker last: every file of the checkpoint with its size and sha256, and what
    the checkpoint was trained from. Also keeps damaged checkpoints out of a resumed run's way."""

    def __init__(self, recipe: dict):
        self.recipe = recipe

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:  # global_step is the resumed step here (0 for a new run)
            resume.set_aside_newer(Path(args.output_dir), state.global_step)

    def on_save(self, args, state, control, model=None, **kwargs):
        from accelerate import PartialState

        # every process has written its part (its RNG state; under DeepSpeed its shards): on a filesystem
        # the processes share, the main process then lists and hashes them all
        PartialState().wait_for_everyone()
        if not state.is_world_process_zero or not all_finite(model):
            return  # a checkpoint of diverged weights is never offered for resuming
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        write_json(folder / COMPLETE, {"recipe": self.recipe, "versions": versions(), "step": state.global_step,
                                       "max_steps": state.max_steps, "data_files": resume.data_files(self.recipe),
                                       "world_size": args.world_size, "files": file_records(folder)})


class StopOnSignal(TrainerCallback):
    """SIGINT/SIGTERM: finish the current step, save a checkpoint, stop. A second signal stops at once.

    With several processes every rank must stop at the same step, so the flag is combined across ranks:
    a non-blocking all_reduce on a CPU (gloo) group, started at the end of each step and read at the end
    of the next. A blocking all_reduce and `.item()` every step would stall each GPU step on the host;
    this costs one step of delay instead."""

    def __init__(self, cpu_group=None):
        """`cpu_group`: the gloo group the rank agreement made (runner/launch/ranks.py); None for one process."""
        self.cpu_group = cpu_group
        self.received: str | None = None
        self.previous = {}
        self.agreement = None

    def watch(self):
        """Catch the signals from now on: `train` calls it before it writes anything, so that a Ctrl-C while
        the records are written or the trainer starts stops the run at its first step instead of being lost
        in whatever Python code it lands in (a KeyboardInterrupt inside a weakref callback is ignored)."""
        if not self.previous:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._note)

    def on_train_begin(self, args, state, control, **kwargs):
        self.watch()
        self.agreement = None if self.cpu_group is None else RankAgreement(self.cpu_group)

    def _note(self, signum, frame):
        self.received = signal.Signals(signum).name
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)  # a second signal is not caught again

    def on_step_end(self, args, state, control, **kwargs):
        anywhere = self.received is not None if self.agreement is None else \
            self.agreement.any_so_far(self.received is not None)
        if anywhere:
            self.received = self.received or "SIGTERM"  # another process got it
            control.should_save = True
            control.should_training_stop = True

    def on_train_end(self, args, state, control, **kwargs):
        # One last, blocking agreement: a signal in the final step(s) (or while another rule stopped training)
        # is then known to every rank alike, so all ranks leave train() by the same path.
        if self.agreement is not None and self.agreement.finish(self.received is not None):
            self.received = self.received or "SIGTERM"

    def restore(self):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}
        if self.agreement is not None:  # also when training raised and on_train_end never ran
            self.agreement.close()
            self.agreement = None


def all_finite(model) -> bool:
    import torch

    return model is None or all(bool(torch.isfinite(p).all()) for p in model.parameters())


class RankAgreement:
    """Whether a flag was raised on any rank, learnt one step late without blocking on the GPU.

    Each call combines the flag with a MAX all_reduce on a gloo (CPU) group, asynchronously, and returns the
    result of the previous call's all_reduce: every rank gets the same answer at the same call.
    """

    def __init__(self, group):
        self.group, self.pending = group, None

    def any_so_far(self, flag: bool) -> bool:
        import torch
        import torch.distributed as dist

        earlier = self._wait()
        value = torch.tensor([1 if flag else 0])
        self.pending = (dist.all_reduce(value, op=dist.ReduceOp.MAX, group=self.group, async_op=True), value)
        return earlier

    def _wait(self) -> bool:
        if self.pending is None:
            return False
        work, value = self.pending
        work.wait()
        self.pending = None
        return bool(value.item())

    def finish(self, flag: bool) -> bool:
        """The flag on any rank, up to now: the pending result, then this last all_reduce waited for."""
        earlier = self.any_so_far(flag)
        return self._wait() or earlier

    def close(self) -> None:
        """Release the group; an all_reduce still in flight (training raised) is abandoned, not waited for."""
        import torch.distributed as dist

        self.pending = None
        try:
            dist.destroy_process_group(self.group)
        except (RuntimeError, ValueError):  # the default group may already be gone
            pass


class AtTrainStart(TrainerCallback):
    """`action()` at the start of train(), once the engine has wrapped the model (runner/compat.py
    evaluation_must_wait_for_train)."""

    def __init__(self, action):
        self.action = action

    def on_train_begin(self, args, state, control, **kwargs):
        self.action()
