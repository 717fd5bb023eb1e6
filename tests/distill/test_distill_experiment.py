"""Smoke test of experiments/distill.py (the `distill` job) on its `runlocal` variant."""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from helpers import REPO, outside_env
from moe_jax.config import load_config, load_experiment
from moe_jax.jobs import distill
from moe_jax.models.transformer import Transformer
from moe_jax.train.checkpoint import Checkpointer
from moe_jax.train.optimizer import default_optimizer_config, make_optimizer
from moe_jax.train.state import create_train_state

quiet = dict(log=lambda *_: None)


@pytest.mark.slow  # ~75 s of CPU: three trainings and four greedy evaluations
def test_distill_runlocal_reports_teacher_scratch_and_distilled(tmp_path):
    module, config = load_experiment("experiments/distill.py:runlocal")
    assert config.job == "distill" and not hasattr(module, "run")
    # As a user runs it, from another directory.
    out = subprocess.run([sys.executable, "-m", "moe_jax.main", f"--config={REPO}/experiments/distill.py:runlocal",
                          f"--workdir={tmp_path}"], cwd=tmp_path.parent, env=outside_env(),
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.load(open(tmp_path / "summary.json"))
    d = summary["details"]
    assert summary["job"] == "distill" and summary["value"] == d["distilled_exact_match"]
    assert d["student_params"] < d["teacher_params"]
    for key in ("teacher_exact_match", "scratch_exact_match", "distilled_exact_match"):
        assert 0.0 <= d[key] <= 1.0
    # The teacher is saved, so a rerun reads it instead of training.
    assert (tmp_path / "teacher" / "model_config.json").is_file()
    assert (tmp_path / "summary.json").is_file()


def test_teacher_is_read_from_a_training_workdir(tmp_path):
    config = load_config("experiments/distill.py:runlocal")
    run_dir = tmp_path / "teacher_run"
    state = create_train_state(Transformer.from_config(config.model), make_optimizer(default_optimizer_config()),
                               jax.random.PRNGKey(3), config.data.seq_len)
    ckpt = Checkpointer(str(run_dir), async_save=False, **quiet)
    ckpt.save(7, state, {})
    ckpt.close()
    config.distill.teacher_workdir = str(run_dir)
    params, _, seconds = distill.teacher(config, str(tmp_path / "work"), None, None, **quiet)
    assert seconds == 0.0 and not (tmp_path / "work" / "teacher").exists()
    jax.tree.map(np.testing.assert_array_equal, params, state.params)

    config.distill.teacher_workdir = str(tmp_path / "nothing_here")
    with pytest.raises(FileNotFoundError, match="distill.teacher_workdir"):
        distill.teacher(config, str(tmp_path / "work"), None, None, **quiet)


def test_arith_variant_distils_the_main_job():
    main_job = load_config("experiments/pretrain_arith.py:tiny")
    config = load_config("experiments/distill.py:arith")
    assert config.model == main_job.model and config.data == main_job.data
    assert config.student_model.num_layers < config.model.num_layers
