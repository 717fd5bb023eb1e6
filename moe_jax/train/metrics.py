"""Metrics a person can look at: JSONL, TensorBoard, and a progress bar.

`metrics.jsonl` gets one object per logged step and per evaluation (append-only; a
resumed run appends the steps it repeats, so readers merge records per step with later
values winning: see `read_metrics`).
Per-layer routing statistics (expert load, dropped fraction, bias) are logged as lists.
"""

from __future__ import annotations

import json
import math
import os
import time

import numpy as np

from moe_jax.train.console import terminal_err, terminal_out


def _plain(value):
    if isinstance(value, (np.ndarray, np.generic)) or hasattr(value, "__array__"):
        array = np.asarray(value)
        return array.item() if array.ndim == 0 else array.tolist()
    return value


class MetricsWriter:
    def __init__(self, workdir: str, tensorboard: bool = True, enabled: bool = True):
        self.enabled = enabled
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        if enabled and tensorboard:
            try:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
            except ImportError:
                self._tb = None

    def write(self, step: int, metrics: dict):
        if not self.enabled:
            return
        record = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for key, value in record.items():
                if key == "step":
                    continue
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self._tb.add_scalar(key, value, step)
                elif isinstance(value, list) and value and isinstance(value[0], list):
                    # [layers, experts] routing statistics: one histogram-like scalar set per layer
                    for layer, row in enumerate(value):
                        self._tb.add_scalar(f"{key}/layer_{layer}_max_over_mean",
                                            max(row) / max(np.mean(row), 1e-9), step)
                elif isinstance(value, list) and value and isinstance(value[0], (int, float)):
                    for layer, item in enumerate(value):
                        self._tb.add_scalar(f"{key}/layer_{layer}", item, step)
            self._tb.flush()

    def close(self):
        if self._tb is not None:
            self._tb.close()


def read_metrics(workdir: str) -> dict[int, dict]:
    """step -> every field written for it, merged; a later value wins (after a resume)."""
    records = {}
    path = os.path.join(workdir, "metrics.jsonl")
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                if line.strip():
                    record = json.loads(line)
                    records.setdefault(record["step"], {}).update(record)
    return records


class Progress:
    """A tqdm bar with tokens/s and ETA; plain log lines when not on a terminal."""

    def __init__(self, total_steps: int, start_step: int, tokens_per_step: int, enabled: bool = True):
        self.tokens_per_step = tokens_per_step
        self.start_time, self.start_step = time.time(), start_step
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            stream = terminal_err()  # the terminal, also when library output goes to a log
            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                            mininterval=1.0 if stream.isatty() else 30.0, file=stream)

    def tokens_per_second(self, step: int) -> float:
        elapsed = max(time.time() - self.start_time, 1e-9)
        return (step - self.start_step) * self.tokens_per_step / elapsed

    def update(self, step: int, loss: float | None = None, **shown: float):
        """Advance to `step`, showing the loss (or whichever scalars are given) and tokens/s."""
        if self.bar is not None:
            values = ({"loss": loss} if loss is not None else {}) | shown
            self.bar.set_postfix(**{k: f"{v:.4f}" for k, v in values.items()},
                                 tok_s=f"{self.tokens_per_second(step):,.0f}", refresh=False)
            self.bar.update(step - self.bar.n)  # redraws at most every mininterval

    def write(self, message: str):
        if self.bar is not None:
            self.bar.write(message, file=self.bar.fp)  # above the bar, on the bar's own stream
        else:
            print(message, file=terminal_out(), flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()
