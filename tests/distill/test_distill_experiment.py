"""Smoke test of experiments/distill.py on its `runlocal` variant (a few steps)."""

import importlib.util

import pytest

from moe_jax.config import load_config


@pytest.mark.slow  # ~75 s of CPU: three trainings and four greedy evaluations
def test_distill_runlocal_reports_teacher_scratch_and_distilled(tmp_path):
    config = load_config("experiments/distill.py:runlocal")
    spec = importlib.util.spec_from_file_location("distill_experiment", "experiments/distill.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    summary = module.run(config, str(tmp_path), log=lambda *_: None)
    assert summary["student_params"] < summary["teacher_params"]
    for key in ("teacher_exact_match", "scratch_exact_match", "distilled_exact_match"):
        assert 0.0 <= summary[key] <= 1.0
    # The teacher is saved, so a rerun (or another experiment) reads it instead of training.
    assert (tmp_path / "teacher").is_dir()
