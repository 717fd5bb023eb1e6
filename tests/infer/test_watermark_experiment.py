"""Smoke test of experiments/watermark.py (the language model on the standard library's
docstrings, then the watermark study) on its `runlocal` variant, run as a user runs it."""

import json
import subprocess
import sys

import pytest

from helpers import REPO, outside_env


@pytest.mark.slow  # ~75 s of CPU: a 4-step training, 24 texts sampled and scored
def test_watermark_runlocal_reports_detection_and_quality_per_delta(tmp_path):
    out = subprocess.run([sys.executable, "-m", "moe_jax.main",
                          f"--config={REPO}/experiments/watermark.py:runlocal", f"--workdir={tmp_path}"],
                         cwd=tmp_path.parent, env=outside_env(), capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.load(open(tmp_path / "summary.json"))
    study = summary["details"]["study"]
    assert summary["job"] == "watermark" and summary["examples"] == 8
    assert study["null"]["texts"] == 8 and [row["delta"] for row in study["deltas"]] == [1.0, 2.0]
    assert summary["value"] == study["deltas"][-1]["detection_rate"]
    for row in study["deltas"]:
        assert 0.0 <= row["detection_rate"] <= 1.0 and row["texts"] == 8
    # Held-out text knows nothing of the key, so the biased distribution (gamma 0.25 of
    # the vocabulary favoured) fits it worse than the model's own, more so as delta grows.
    plain = study["null"]["heldout_ppl"]
    assert plain < study["deltas"][0]["heldout_ppl"] < study["deltas"][1]["heldout_ppl"]
