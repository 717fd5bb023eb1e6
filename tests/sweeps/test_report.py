"""The sweep report on runs written by hand: Student-t intervals, one row per grid point,
the CSV, the figures, and curves of any runs compared."""

import csv
import json
import math
import os
import subprocess
import sys

import pytest

from helpers import outside_env
from moe_jax.jobs.summary import Summary, read_summary
from moe_jax.sweeps.report import markdown_table, point_rows, t_interval, write_report
from moe_jax.sweeps.runs import collect_runs, read_run
from moe_jax.train.metrics import MetricsWriter

PNG = b"\x89PNG\r\n\x1a\n"


def fake_run(workdir, value=None, losses=(2.0, 1.0), load=((0.5, 0.25, 0.25, 0.0),), rate=1000.0, wall=60.0):
    """A run's files as the jobs write them: metrics.jsonl every 10 steps, summary.json
    when `value` is given (a finished run)."""
    os.makedirs(workdir, exist_ok=True)
    writer = MetricsWriter(str(workdir), tensorboard=False)
    for i, loss in enumerate(losses):
        writer.write(10 * (i + 1), {"loss": loss, "tokens_per_second": rate, "routing/expert_load": load})
    writer.write(10 * len(losses), {"eval/exact_match": value or 0.0, "eval/examples": 100})
    if value is not None:
        Summary(job="pretrain", metric="held-out exact match", value=value, steps=10 * len(losses),
                seconds=wall / 2, examples=100, wall_seconds=wall, cpu_seconds=2 * wall).write(str(workdir))


def test_t_interval_matches_the_table_values():
    # [0.5, 0.6, 0.7]: mean 0.6, s = 0.1, t(0.975, 2 dof) = 4.3027 -> 4.3027 * 0.1 / sqrt(3) = 0.24841
    mean, half = t_interval([0.5, 0.6, 0.7])
    assert math.isclose(mean, 0.6) and math.isclose(half, 0.248414, rel_tol=1e-5)
    # [1, 3]: s = sqrt(2), t(0.975, 1 dof) = 12.7062 -> 12.7062 * sqrt(2) / sqrt(2)
    assert math.isclose(t_interval([1.0, 3.0])[1], 12.7062, rel_tol=1e-5)
    assert t_interval([0.4]) == (0.4, None) and t_interval([0.4, None])[1] is None
    assert math.isnan(t_interval([])[0])


@pytest.fixture
def sweep_root(tmp_path):
    root = tmp_path / "sweep"
    for seed, value in enumerate((0.5, 0.6, 0.7)):
        fake_run(root / "router=softmax" / f"seed={seed}", value, losses=(2.0, 1.0 + seed))
    fake_run(root / "router=sigmoid_bias" / "seed=0", 0.9, load=((0.25, 0.25, 0.25, 0.25),), wall=30.0)
    fake_run(root / "router=sigmoid_bias" / "seed=1")  # interrupted: metrics, no summary
    os.makedirs(root / "data" / "moe_jax_arithmetic")  # the shared dataset is no run
    return root


def test_one_row_per_point_with_mean_interval_and_the_rest(sweep_root):
    records = collect_runs(str(sweep_root))
    assert [(r.point, r.seed, r.finished) for r in records] == [
        ("router=sigmoid_bias", 0, True), ("router=sigmoid_bias", 1, False),
        ("router=softmax", 0, True), ("router=softmax", 1, True), ("router=softmax", 2, True)]
    rows = {r["point"]: r for r in point_rows(records)}
    soft = rows["router=softmax"]
    assert soft["seeds"] == soft["planned"] == 3 and soft["values"] == [0.5, 0.6, 0.7]
    assert math.isclose(soft["ci95"], 0.248414, rel_tol=1e-5)
    # final losses 1, 2, 3: mean 2, s = 1 -> 4.3027 / sqrt(3) = 2.48414
    assert soft["final_loss"] == 2.0 and math.isclose(soft["final_loss_ci95"], 2.48414, rel_tol=1e-5)
    # load fractions [0.5, 0.25, 0.25, 0] x 4 experts: the busiest expert has twice the mean
    assert soft["max_over_mean_load"] == 2.0 and soft["tokens_per_second"] == 1000.0
    bias = rows["router=sigmoid_bias"]
    assert (bias["seeds"], bias["planned"], bias["ci95"], bias["max_over_mean_load"]) == (1, 2, None, 1.0)
    assert bias["wall_seconds"] == 30.0 and bias["cpu_seconds"] == 60.0
    table = markdown_table(point_rows(records))
    assert "| router=softmax | 3 | 60.0 ± 24.8 | 50.0 / 60.0 / 70.0 |" in table
    assert "| router=sigmoid_bias | 1 of 2 | 90.0 |" in table


def test_report_writes_the_table_the_csv_and_three_figures(sweep_root, tmp_path):
    report = write_report(str(sweep_root), out=str(tmp_path / "out"))
    names = sorted(os.path.basename(p) for p in report["files"])
    assert names == ["expert_load.png", "loss.png", "metric.png", "report.csv", "report.md"]
    for path in report["files"]:
        if path.endswith(".png"):
            assert open(path, "rb").read(8) == PNG and os.path.getsize(path) > 5000
    rows = list(csv.DictReader(open(tmp_path / "out" / "report.csv")))
    assert [r["point"] for r in rows] == ["router=sigmoid_bias", "router=softmax"]
    assert rows[1]["values"] == "0.5;0.6;0.7" and math.isclose(float(rows[1]["ci95"]), 0.248414, rel_tol=1e-4)
    assert rows[0]["ci95"] == ""
    assert "![metric.png](metric.png)" in open(tmp_path / "out" / "report.md").read()


def test_the_sweep_index_keeps_grid_order(sweep_root):
    index = {"runs": [{"point": "router=softmax", "seed": s, "workdir": f"router=softmax/seed={s}"} for s in (2, 0)]}
    json.dump(index, open(sweep_root / "sweep.json", "w"))
    assert [(r.point, r.seed) for r in collect_runs(str(sweep_root))] == [("router=softmax", 2), ("router=softmax", 0)]


def test_read_summary_accepts_only_a_jobs_summary(tmp_path):
    assert read_summary(str(tmp_path)) is None
    (tmp_path / "summary.json").write_text(json.dumps({"step": 3, "exact_match": 0.5}))  # a loop's own dict
    assert read_summary(str(tmp_path)) is None
    (tmp_path / "summary.json").write_text("{")  # half written
    assert read_summary(str(tmp_path)) is None
    fake_run(tmp_path, 0.25)
    assert read_summary(str(tmp_path)).value == 0.25 and read_run(str(tmp_path)).final_loss == 1.0


def test_report_and_compare_commands(sweep_root, tmp_path):
    def moe_jax(*args):
        return subprocess.run([sys.executable, "-m", "moe_jax.cli", *args], cwd=tmp_path, env=outside_env(),
                              capture_output=True, text=True, timeout=120)

    out = moe_jax("report", str(sweep_root))
    assert out.returncode == 0, out.stderr
    assert "| router=softmax | 3 |" in out.stdout and (sweep_root / "report.md").exists()
    a, b = sweep_root / "router=softmax" / "seed=0", sweep_root / "router=sigmoid_bias" / "seed=1"
    out = moe_jax("compare", str(a), str(b), "--out", str(tmp_path / "cmp.png"))
    assert out.returncode == 0, out.stderr
    assert "router=softmax/seed=0: final loss 1" in out.stdout
    assert open(tmp_path / "cmp.png", "rb").read(8) == PNG
    out = moe_jax("compare", str(a), str(tmp_path / "nothing"))
    assert out.returncode == 2 and "no metrics.jsonl" in out.stderr and "Traceback" not in out.stderr
    out = moe_jax("report", str(tmp_path / "empty"))
    assert out.returncode == 2 and "no runs" in out.stderr
