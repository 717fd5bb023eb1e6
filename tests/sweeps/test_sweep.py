"""`moe-jax sweep` end to end on a micro experiment, 2 grid points x 2 seeds, run from
outside the repository: the report, a rerun that redoes nothing, and a sweep stopped
mid-way whose rerun resumes and ends with the table of an uninterrupted one."""

import csv
import os
import signal
import subprocess
import sys
import time

import pytest

from helpers import outside_env

MICRO_EXPERIMENT = '''
from moe_jax.jobs import recipes

VARIANTS = ("micro",)


def get_config(arg=None):
    c = recipes.arithmetic("tiny")
    c.model.update(d_model=32, num_layers=2, dense_ffn=64, num_heads=2, kv_lora_rank=16, qk_nope_head_dim=8,
                   qk_rope_head_dim=8, v_head_dim=8, num_experts=4, expert_ffn=16)
    c.data.update(seq_len=64, num_train=400, num_test=40)
    c.train.update(batch_size=4, steps=12, log_every=2, checkpoint_every=2, progress_bar=False)
    c.eval.update(every=0, final_num_examples=8, batch_size=8, max_new_tokens=4, show=0)
    c.mesh.fsdp = 1
    return c


def sweep():
    return [{"config.model.router": router} for router in ("softmax", "sigmoid_bias")]
'''
NAMES = ["router=softmax/seed=0", "router=softmax/seed=1", "router=sigmoid_bias/seed=0",
         "router=sigmoid_bias/seed=1"]
TIMING = ("tokens_per_second", "wall_seconds", "cpu_seconds")  # the attempt's speed, not the run's result


def sweep_command(where, root):
    return [sys.executable, "-m", "moe_jax.cli", "sweep", str(where / "micro.py"), "--root", str(root),
            "--seeds", "2", "--parallel", "2"]


def attempts(root, name):
    """How many times the sweep started this run (one `$ command` line each)."""
    with open(os.path.join(root, name, "console.log")) as f:
        return sum(line.startswith("$ ") for line in f)


def table(root):
    with open(os.path.join(root, "report.csv")) as f:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(f)]


@pytest.mark.slow
def test_a_micro_sweep_reports_skips_finished_runs_and_resumes_a_stopped_one(tmp_path):
    (tmp_path / "micro.py").write_text(MICRO_EXPERIMENT)
    env = outside_env()
    whole = tmp_path / "whole"
    out = subprocess.run(sweep_command(tmp_path, whole), cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for name in ("report.md", "report.csv", "metric.png", "loss.png", "expert_load.png", "sweep.json"):
        assert (whole / name).exists(), name
    rows = table(whole)
    assert [(r["point"], r["seeds"]) for r in rows] == [("router=softmax", "2"), ("router=sigmoid_bias", "2")]
    assert all(float(r["final_loss"]) > 0 and r["ci95"] != "" for r in rows)
    assert all(attempts(whole, name) == 1 for name in NAMES)

    # A rerun finds every run finished and starts none.
    out = subprocess.run(sweep_command(tmp_path, whole), cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and "4 already finished, 0 to run" in out.stdout, out.stdout
    assert all(attempts(whole, name) == 1 for name in NAMES)

    # Stop a second sweep once a run has finished and a later one has checkpointed.
    stopped = tmp_path / "stopped"
    proc = subprocess.Popen(sweep_command(tmp_path, stopped), cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 600

    def checkpointed(name):
        """Early in its 12 steps (newest checkpoint at step 4 or before): a stop sent now
        reaches the run well before its last step, even on a loaded machine, where one
        sent nearer the end let both runs finish first."""
        path = stopped / name / "checkpoints"
        steps = [int(p) for p in os.listdir(path) if p.isdigit()] if path.is_dir() else []
        return bool(steps) and max(steps) <= 4

    while time.time() < deadline and proc.poll() is None and not (
            any((stopped / n / "summary.json").exists() for n in NAMES)
            and any(checkpointed(n) and not (stopped / n / "summary.json").exists() for n in NAMES[2:])):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 130, output[-3000:]
    unfinished = [n for n in NAMES if not (stopped / n / "summary.json").exists()]
    assert unfinished and len(unfinished) < 4, output[-3000:]

    out = subprocess.run(sweep_command(tmp_path, stopped), cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert f"{4 - len(unfinished)} already finished" in out.stdout
    for name in NAMES:
        assert attempts(stopped, name) == (2 if name in unfinished else 1), name
    resumed = [n for n in unfinished if "resumed from step" in open(stopped / n / "console.log").read()]
    assert resumed, "no stopped run continued from its checkpoint"
    assert table(stopped) == table(whole)  # the same numbers as the uninterrupted sweep
