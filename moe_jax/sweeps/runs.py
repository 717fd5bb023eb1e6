"""What a finished (or unfinished) run left in its workdir, read back for tables and figures.

    records = collect_runs("runs/ablation")      # every run under a sweep's root
    record = read_run("runs/arith")              # one workdir

A run records summary.json (the job's Summary), metrics.jsonl (loss, tokens/s and the
per-layer expert load, every log_every steps; evaluations as eval/<name>) and
config.json. A sweep's runs sit at <root>/<grid point>/seed=<n>; any other directory
holding a summary or metrics is a run of its own, its point its path under the root.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re

import numpy as np

from moe_jax.jobs.summary import Summary, read_summary
from moe_jax.train.metrics import read_metrics

INDEX_FILE = "sweep.json"  # written by the sweep: its runs in grid order
_SEED_DIR = re.compile(r"^seed=(\d+)$")
_NOT_RUNS = {"data", "checkpoints", "tensorboard", "corrupt"}  # a run's own subdirectories
LOAD_WINDOW = 5  # logged steps the expert load is averaged over (one batch's load is noisy)


@dataclasses.dataclass
class RunRecord:
    workdir: str
    point: str
    seed: int | None
    summary: Summary | None
    metrics: dict  # step -> every field logged for it

    @property
    def finished(self) -> bool:
        return self.summary is not None

    def curve(self, key: str = "loss") -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of one logged scalar, in step order."""
        steps = sorted(s for s, r in self.metrics.items() if isinstance(r.get(key), (int, float)))
        return np.asarray(steps, np.int64), np.asarray([self.metrics[s][key] for s in steps], np.float64)

    @property
    def final_loss(self) -> float | None:
        _, values = self.curve("loss")
        return float(values[-1]) if len(values) else None

    @property
    def tokens_per_second(self) -> float | None:
        """The last logged rate: tokens of the whole attempt over its time so far."""
        _, values = self.curve("tokens_per_second")
        return float(values[-1]) if len(values) else None

    @property
    def expert_load(self) -> np.ndarray | None:
        """[layers, E] fraction of assignments per expert, times E (1.0 = balanced),
        averaged over the last LOAD_WINDOW logged steps."""
        loads = [np.asarray(r["routing/expert_load"], np.float64) for _, r in sorted(self.metrics.items())
                 if "routing/expert_load" in r]
        if not loads:
            return None
        window = np.mean(loads[-LOAD_WINDOW:], axis=0)
        return window * window.shape[-1]

    @property
    def max_over_mean_load(self) -> float | None:
        """The busiest expert's load over the mean, in the most unbalanced layer."""
        load = self.expert_load
        return None if load is None else float(load.max())


def read_run(workdir: str, point: str | None = None, seed: int | None = None) -> RunRecord:
    return RunRecord(workdir=workdir, point=point if point is not None else workdir, seed=seed,
                     summary=read_summary(workdir), metrics=read_metrics(workdir))


def _is_run(directory: str) -> bool:
    return any(os.path.exists(os.path.join(directory, f)) for f in ("summary.json", "metrics.jsonl"))


def collect_runs(root: str) -> list[RunRecord]:
    """Every run under `root`: the sweep's runs in grid order when it wrote its index,
    else every directory holding a summary or metrics, sorted by path."""
    index = os.path.join(root, INDEX_FILE)
    if os.path.exists(index):
        with open(index) as f:
            entries = json.load(f)["runs"]
        return [read_run(os.path.join(root, e["workdir"]), e["point"], e["seed"]) for e in entries]
    records = []
    for directory, subdirs, _ in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d not in _NOT_RUNS)
        if not _is_run(directory):
            continue
        subdirs[:] = []  # a run's own directories hold no runs
        name = os.path.basename(directory)
        match = _SEED_DIR.match(name)
        where = os.path.dirname(directory) if match else directory
        point = os.path.relpath(where, root)
        records.append(read_run(directory, point if point != "." else os.path.basename(os.path.abspath(root)),
                                int(match.group(1)) if match else None))
    return records


def group_by_point(records: list[RunRecord]) -> dict[str, list[RunRecord]]:
    """Grid point -> its runs, points in first-seen order."""
    groups: dict[str, list[RunRecord]] = {}
    for record in records:
        groups.setdefault(record.point, []).append(record)
    return groups
