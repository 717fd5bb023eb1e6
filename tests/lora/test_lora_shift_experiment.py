"""Smoke test of experiments/lora_shift.py (the `lora` job) on its `runlocal` variant."""

import json
import subprocess
import sys

import pytest

from helpers import REPO, outside_env
from moe_jax.config import load_config, load_experiment
from moe_jax.jobs import run_experiment

quiet = dict(log=lambda *_: None)


@pytest.mark.slow  # ~75 s of CPU: three trainings and four greedy evaluations
def test_lora_shift_runlocal_reports_both_accuracies_and_optimizer_bytes(tmp_path):
    module, config = load_experiment("experiments/lora_shift.py:runlocal")
    assert config.job == "lora"
    # As a user runs it, from another directory.
    out = subprocess.run([sys.executable, "-m", "moe_jax.main", f"--config={REPO}/experiments/lora_shift.py:runlocal",
                          f"--workdir={tmp_path / 'run'}"], cwd=tmp_path, env=outside_env(),
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "after LoRA" in out.stdout.splitlines()[-1]
    d = json.load(open(tmp_path / "run" / "summary.json"))["details"]
    for key in ("full_exact_match", "lora_exact_match", "trainable_fraction"):
        assert 0.0 <= d[key] <= 1.0
    assert 0 < d["lora_optimizer_bytes"] < d["full_optimizer_bytes"] / 2
    assert (tmp_path / "run" / "pretrained" / "model_config.json").is_file()
    assert len(module.sweep()) == 5


def test_arith_variant_starts_from_the_main_job_and_names_a_missing_base(tmp_path):
    main_job = load_config("experiments/pretrain_arith.py:tiny")
    config = load_config("experiments/lora_shift.py:arith")
    assert config.model == main_job.model and config.data.difficulty == main_job.data.difficulty
    assert config.data.shifted_difficulty.min_operands == 4

    module, config = load_experiment("experiments/lora_shift.py:runlocal")
    config.finetune.base_workdir = str(tmp_path / "no_run_here")
    with pytest.raises(FileNotFoundError, match="finetune.base_workdir"):
        run_experiment(module, config, str(tmp_path / "work"), **quiet)
