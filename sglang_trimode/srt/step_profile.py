"""Per-step timing of any SGLang server that loads this plugin (`bench/step_profile.py`).

With `SGLANG_TRIMODE_STEP_PROFILE=FILE` in a server's environment, `register()` hooks, in the
scheduler process:

- `Scheduler.run_batch`: one JSON line per scheduler step, appended to `FILE`:
  `{"pid", "t" (perf_counter at the step's start), "run_s" (the step's run_batch: worker and
  model), "fwd_s" (its model forwards, synchronised), "forwards", "bs", "mode"}`;
- `ModelRunner.forward`: each model forward timed, with `torch.cuda.synchronize()` before and
  after on a CUDA device (so `fwd_s` is device time; the sync costs a GPU server its overlap).

The bench reads the lines: a step's loop time is the gap to the next step's `t` (scheduler work
included), its host work the loop time less `fwd_s`. A plain SGLang AR server (no TRIMODE) is
profiled the same way, which is the point: both servers' steps split alike. Works for every
worker (plain, TRIMODE) because both go through these two functions.
"""

from __future__ import annotations

import json
import os
import time

ENV = "SGLANG_TRIMODE_STEP_PROFILE"
_RUN_BATCH = "sglang.srt.managers.scheduler.Scheduler.run_batch"
_FORWARD = "sglang.srt.model_executor.model_runner.ModelRunner.forward"


class _Recorder:
    """Accumulates one step's forwards; appends one line per step (O_APPEND: whole lines)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd: int | None = None
        self.fwd_s = 0.0
        self.forwards = 0
        self.depth = 0  # run_batch nesting (a step inside a step is not a new step)

    def write(self, record: dict) -> None:
        if self.fd is None:
            self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.write(self.fd, (json.dumps(record) + "\n").encode())


_recorder: _Recorder | None = None


def _sync(device) -> None:
    import torch

    if getattr(device, "type", device) == "cuda" or str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _around_run_batch(original, scheduler, batch, *args, **kwargs):
    rec = _recorder
    if rec is None or rec.depth:
        return original(scheduler, batch, *args, **kwargs)
    rec.depth, rec.fwd_s, rec.forwards = 1, 0.0, 0
    mode = getattr(getattr(batch, "forward_mode", None), "name", "?")  # before the worker's own
    bs = len(getattr(batch, "reqs", ()) or ())
    t0 = time.perf_counter()
    try:
        return original(scheduler, batch, *args, **kwargs)
    finally:
        run_s = time.perf_counter() - t0
        rec.depth = 0
        rec.write(
            {
                "pid": os.getpid(),
                "t": t0,
                "run_s": run_s,
                "fwd_s": rec.fwd_s,
                "forwards": rec.forwards,
                "bs": bs,
                "mode": mode,
            }
        )


def _around_forward(original, runner, *args, **kwargs):
    rec = _recorder
    if rec is None:
        return original(runner, *args, **kwargs)
    device = getattr(runner, "device", "cpu")
    _sync(device)
    t0 = time.perf_counter()
    out = original(runner, *args, **kwargs)
    _sync(device)
    rec.fwd_s += time.perf_counter() - t0
    rec.forwards += 1
    return out


def install_from_env() -> bool:
    """Register the two timing hooks when `SGLANG_TRIMODE_STEP_PROFILE` names a file; True if so."""
    global _recorder
    path = os.environ.get(ENV)
    if not path:
        return False
    if _recorder is not None:
        return True
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    _recorder = _Recorder(path)
    HookRegistry.register(_RUN_BATCH, _around_run_batch, HookType.AROUND)
    HookRegistry.register(_FORWARD, _around_forward, HookType.AROUND)
    return True
