"""SIGTERM as a request to stop at the next step boundary, agreed by every process.

TPU VMs and cluster schedulers (SLURM, Kubernetes) preempt a job with SIGTERM and a
grace period. The handler only sets a flag; the training loop asks `requested()` after
each step, saves a checkpoint there and raises `Preempted`, which `python -m
moe_jax.main` turns into a clean exit (status 143, as a process killed by SIGTERM
reports) with the command to resume. On several processes the signal may reach them at
different steps, so `requested()` is an all-process OR: every process saves at the same
step, as the collective checkpoint needs.
"""

from __future__ import annotations

import signal
import threading

import jax
import numpy as np

EXIT_STATUS = 143  # 128 + SIGTERM


class Preempted(Exception):
    def __init__(self, step: int, workdir: str | None):
        self.step, self.workdir = step, workdir
        super().__init__(f"preempted (SIGTERM): checkpoint saved at step {step} in {workdir}; "
                         f"rerun the same command to resume")


class PreemptionWatch:
    """Context manager installing the SIGTERM handler (main thread only; elsewhere, e.g.
    in a notebook's worker thread, it watches nothing)."""

    def __init__(self):
        self._flag = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
        return False

    def _handle(self, signum, frame):
        del signum, frame
        self._flag = True

    def requested(self) -> bool:
        """True on every process once any process has received SIGTERM."""
        if jax.process_count() == 1:
            return self._flag
        from jax.experimental import multihost_utils  # the supported cross-process gather

        flags = multihost_utils.process_allgather(np.asarray([self._flag], np.int32))
        return bool(np.asarray(flags).any())
