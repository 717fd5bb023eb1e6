"""What the launcher decides without running anything: which runs are finished, how the
cores are split, and the root's index of runs."""

import json
import os

from helpers import REPO
from moe_jax.config import load_experiment
from moe_jax.jobs.summary import Summary
from moe_jax.sweeps import launch
from moe_jax.sweeps.plan import plan_sweep
from moe_jax.train import run_config

ARITH = os.path.join(REPO, "experiments", "pretrain_arith.py") + ":tiny"


def finish(run, **changed):
    """Leave what a finished run leaves: its recorded config (with `changed` fields) and a Summary."""
    _, config = load_experiment(run.spec, run.overrides)
    for field, value in changed.items():
        section, name = field.split(".")
        config[section][name] = value
    run_config.write(run.workdir, config)
    Summary(job="pretrain", metric="m", value=0.5, steps=1, seconds=1.0).write(run.workdir)


def test_a_run_is_finished_when_its_summary_is_of_the_values_the_sweep_asks_for(tmp_path):
    first, second, third = plan_sweep(ARITH, str(tmp_path), seeds=1, overrides=["train.steps=50"])[:3]
    finish(first)
    finish(second, **{"train.steps": 40})  # an earlier sweep of fewer steps: continue it to 50
    os.makedirs(third.workdir)
    run_config.write(third.workdir, load_experiment(third.spec, third.overrides)[1])  # started, not finished
    assert [launch.is_finished(r) for r in (first, second, third)] == [True, False, False]


def test_cores_are_split_between_concurrent_runs():
    if not hasattr(os, "sched_getaffinity"):
        return
    cores = sorted(os.sched_getaffinity(0))
    assert launch._core_slots(1) == [None]  # one run: every core, no pinning
    slots = launch._core_slots(2)
    assert len(slots) == 2 and all(slot and set(slot) <= set(cores) for slot in slots)
    if len(cores) >= 2:
        assert not set(slots[0]) & set(slots[1])
    assert launch.default_parallel() == max(1, len(cores) // 2)


def test_the_index_keeps_runs_of_earlier_sweeps_into_the_same_root(tmp_path):
    runs = plan_sweep(ARITH, str(tmp_path), seeds=2)
    done = [launch.Outcome(r, "finished") for r in runs]
    launch.write_index(str(tmp_path), runs[:3], done[:3])
    launch.write_index(str(tmp_path), runs[2:5], done[2:5])  # overlaps the first in one run
    listed = [r["workdir"] for r in json.load(open(tmp_path / "sweep.json"))["runs"]]
    assert listed == [os.path.relpath(r.workdir, tmp_path) for r in runs[2:5] + runs[:2]]
