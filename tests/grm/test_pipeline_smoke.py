"""The whole SPCT pipeline (cold start, RFT, meta RM, RL, evaluation, best-of-n) on tiny
sizes, through the experiment's `run` entry, then a resume that redoes nothing."""

import importlib.util
import json
import os

import pytest


def _experiment():
    spec = importlib.util.spec_from_file_location("grm_spct", "experiments/grm_spct.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_pipeline_runs_every_phase_and_resumes(tmp_path):
    from moe_jax.jobs import grm_spct

    config = _experiment().smoke_config()
    summary = grm_spct.run(config, str(tmp_path), log=lambda *_: None).details
    for key in ("exact_match", "eval_examples", "task", "step", "train_seconds"):
        assert key in summary, key
    results = json.load(open(tmp_path / "results.json"))
    for stage in ("rft", "rft_rl"):
        table = results[stage]
        assert table["verifier"] == 1.0 and table["random"] == 0.5
        for k in (1, 2):
            assert 0.0 <= table[f"voting@{k}"] <= 1.0 and 0.0 <= table[f"metarm@{k}"] <= 1.0
    best = results["best_of_n"]
    assert set(best) >= {"grm", "random", "greedy", "oracle"}
    assert best["random"] <= best["oracle"] and best["grm"] <= best["oracle"]
    for phase in ("cold_start", "rft", "meta_rm", "rl", "policy"):
        assert os.path.exists(tmp_path / "models" / phase / "model_config.json"), phase
    rft = json.load(open(tmp_path / "models" / "rft" / "info.json"))
    assert 0 <= rft["hinted_inputs"] <= rft["inputs"]  # hinted sampling ran where needed
    assert rft["hinted_records"] <= rft["rft_records"]
    for stage in ("rft", "rft_rl"):  # the samples moe_jax.grm.diagnose reads
        saved = json.load(open(tmp_path / f"eval_samples_{stage}.json"))
        assert len(saved["samples"]) == len(saved["ratings"]) == results[stage]["examples"]
    meta = json.load(open(tmp_path / "models" / "meta_rm" / "info.json"))
    assert meta["meta_trajectories"] == config.grm.meta_sets * config.grm.meta_samples
    assert meta["records"] == meta["meta_trajectories"]
    assert os.path.getsize(tmp_path / "grm_scaling.png") > 1000
    assert os.path.getsize(tmp_path / "best_of_n.png") > 1000

    # Rerunning loads every phase and the stored evaluations instead of recomputing them.
    logged = []
    from moe_jax.grm.pipeline import train_and_evaluate_grm
    again = train_and_evaluate_grm(config, str(tmp_path), log=logged.append)
    assert again["results"] == summary["results"]
    assert sum("loaded from" in line for line in logged) == 4  # best-of-n is stored
