"""The whole SPCT pipeline (cold start, RFT, meta RM, RL, evaluation, best-of-n) on its
`runlocal` sizes, run as a user runs it from another directory, then a resume that
redoes nothing."""

import json
import os
import subprocess
import sys

import pytest

from helpers import REPO, outside_env
from moe_jax.config import load_config


@pytest.fixture(scope="module")
def one_device(tmp_path_factory):
    """The runlocal pipeline as a user runs it, from another directory."""
    tmp_path = tmp_path_factory.mktemp("grm")
    work = tmp_path / "grm"
    out = subprocess.run([sys.executable, "-m", "moe_jax.main",
                          f"--config={REPO}/experiments/grm_spct.py:runlocal", f"--workdir={work}"],
                         cwd=tmp_path, env=outside_env(), capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return work, out.stdout


@pytest.mark.slow
def test_pipeline_runs_every_phase_and_resumes(one_device):
    work, stdout = one_device
    assert "MetaRM@2" in stdout.splitlines()[-1]  # the largest k of the smoke run
    summary = json.load(open(work / "summary.json"))  # the job's Summary, its loop's figures in details
    assert summary["job"] == "grm_spct" and summary["wall_seconds"] > 0
    for key in ("exact_match", "eval_examples", "task", "step", "train_seconds"):
        assert key in summary["details"], key
    results = json.load(open(work / "results.json"))
    for stage in ("rft", "rft_rl"):
        table = results[stage]
        assert table["verifier"] == 1.0 and table["random"] == 0.5
        for k in (1, 2):
            assert 0.0 <= table[f"voting@{k}"] <= 1.0 and 0.0 <= table[f"metarm@{k}"] <= 1.0
    best = results["best_of_n"]
    assert set(best) >= {"grm", "random", "greedy", "oracle"}
    assert best["random"] <= best["oracle"] and best["grm"] <= best["oracle"]
    for phase in ("cold_start", "rft", "meta_rm", "rl", "policy"):
        assert os.path.exists(work / "models" / phase / "model_config.json"), phase
    rft = json.load(open(work / "models" / "rft" / "info.json"))
    assert 0 <= rft["hinted_inputs"] <= rft["inputs"]  # hinted sampling ran where needed
    assert rft["hinted_records"] <= rft["rft_records"]
    for stage in ("rft", "rft_rl"):  # the samples moe_jax.grm.diagnose reads
        saved = json.load(open(work / f"eval_samples_{stage}.json"))
        assert len(saved["samples"]) == len(saved["ratings"]) == results[stage]["examples"]
    config = load_config("experiments/grm_spct.py:runlocal")
    meta = json.load(open(work / "models" / "meta_rm" / "info.json"))
    assert meta["meta_trajectories"] == config.grm.meta_sets * config.grm.meta_samples
    assert meta["records"] == meta["meta_trajectories"]
    assert os.path.getsize(work / "grm_scaling.png") > 1000
    assert os.path.getsize(work / "best_of_n.png") > 1000

    # Rerunning loads every phase and the stored evaluations instead of recomputing them.
    logged = []
    from moe_jax.grm.pipeline import train_and_evaluate_grm
    again = train_and_evaluate_grm(config, str(work), log=logged.append)
    assert again["results"] == results
    assert sum("loaded from" in line for line in logged) == 4  # best-of-n is stored


@pytest.mark.slow
def test_pipeline_on_8_devices_trains_as_one_device_does(one_device, tmp_path):
    """Every phase on expert=4 x data=2 (sampling sharded too); the first phase's losses
    equal the one-device run's."""
    from moe_jax.jobs import grm_spct

    config = load_config("experiments/grm_spct.py:runlocal",
                         ["mesh.data=2", "mesh.fsdp=1", "mesh.expert=4", "mesh.tensor=1"])
    summary = grm_spct.run(config, str(tmp_path / "grm"), log=lambda *_: None)
    assert 0.0 <= summary.value <= 1.0
    work, _ = one_device
    one = json.load(open(work / "models" / "cold_start" / "info.json"))
    eight = json.load(open(tmp_path / "grm" / "models" / "cold_start" / "info.json"))
    assert one["records"] == eight["records"]
    assert abs(eight["final_loss"] - one["final_loss"]) <= 1e-4 * abs(one["final_loss"]), (one, eight)
