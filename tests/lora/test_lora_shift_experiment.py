"""Smoke test of experiments/lora_shift.py on its `runlocal` variant (a few steps)."""

import importlib.util

import pytest

from moe_jax.config import load_config


def load_experiment(path):
    spec = importlib.util.spec_from_file_location("experiment_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # ~75 s of CPU: three trainings and four greedy evaluations
def test_lora_shift_runlocal_reports_both_accuracies_and_optimizer_bytes(tmp_path):
    config = load_config("experiments/lora_shift.py:runlocal")
    assert config.experiment == "experiments.lora_shift"
    summary = load_experiment("experiments/lora_shift.py").run(config, str(tmp_path), log=lambda *_: None)
    for key in ("full_exact_match", "lora_exact_match", "trainable_fraction"):
        assert 0.0 <= summary[key] <= 1.0
    assert 0 < summary["lora_optimizer_bytes"] < summary["full_optimizer_bytes"] / 2
    assert (tmp_path / "summary.json").exists() and (tmp_path / "pretrained").is_dir()
    assert len(load_experiment("experiments/lora_shift.py").sweep()) == 5


def test_arith_variant_starts_from_the_main_job_and_names_a_missing_base(tmp_path):
    main_job = load_config("experiments/pretrain_arith.py:tiny")
    config = load_config("experiments/lora_shift.py:arith")
    assert config.model == main_job.model and config.data.difficulty == main_job.data.difficulty
    assert config.data.shifted_difficulty.min_operands == 4

    config = load_config("experiments/lora_shift.py:runlocal")
    config.finetune.base_workdir = str(tmp_path / "no_run_here")
    with pytest.raises(FileNotFoundError, match="finetune.base_workdir"):
        load_experiment("experiments/lora_shift.py").run(config, str(tmp_path / "work"), log=lambda *_: None)
