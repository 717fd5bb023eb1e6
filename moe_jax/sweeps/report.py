"""A sweep's table: one row per grid point, the mean over seeds with its 95% interval.

    rows = point_rows(collect_runs("runs/ablation"))
    write_report("runs/ablation")   # report.md, report.csv and the figures (figures.py)

The interval is Student's t: mean +- t(0.975, n-1) * s / sqrt(n), with s the sample
standard deviation over the n finished seeds, so it is honest about how few seeds a
sweep can afford (with 3 seeds t is 4.30, not 1.96). A point with one seed has no
interval. Timing columns (tokens/s, wall, CPU) describe the attempt that finished each run
and vary from one machine load to the next; every other column is a property of the
runs themselves and is the same however often a sweep was stopped and resumed.
"""

from __future__ import annotations

import csv
import math
import os

import numpy as np

from moe_jax.sweeps.runs import RunRecord, collect_runs, group_by_point


def t_interval(values, confidence: float = 0.95) -> tuple[float, float | None]:
    """(mean, half-width of the two-sided Student t interval); half-width None for n < 2."""
    values = np.asarray([v for v in values if v is not None], np.float64)
    if len(values) == 0:
        return math.nan, None
    mean = float(values.mean())
    if len(values) < 2:
        return mean, None
    from scipy import stats

    t = stats.t.ppf(0.5 + confidence / 2, df=len(values) - 1)
    return mean, float(t * values.std(ddof=1) / math.sqrt(len(values)))


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def point_rows(records: list[RunRecord]) -> list[dict]:
    """One dict per grid point: seeds finished of those planned, the metric's mean, 95%
    half-width and per-seed values, mean tokens/s, wall and CPU seconds, final loss (mean and
    half-width) and the max/mean expert load (mean over seeds)."""
    rows = []
    for point, runs in group_by_point(records).items():
        done = [r for r in runs if r.finished]
        values = [r.summary.value for r in done]
        mean, half = t_interval(values)
        loss_mean, loss_half = t_interval([r.final_loss for r in done])
        rows.append({
            "point": point, "seeds": len(done), "planned": len(runs),
            "metric": done[0].summary.metric if done else "", "mean": mean, "ci95": half,
            "values": values, "seed_ids": [r.seed for r in done],
            "tokens_per_second": _mean([r.tokens_per_second for r in done]),
            "wall_seconds": _mean([r.summary.wall_seconds for r in done]),
            "cpu_seconds": _mean([r.summary.cpu_seconds for r in done]),
            "final_loss": loss_mean, "final_loss_ci95": loss_half,
            "max_over_mean_load": _mean([r.max_over_mean_load for r in done]),
        })
    return rows


def _fraction_like(rows) -> bool:
    values = [v for row in rows for v in row["values"] if v is not None]
    return bool(values) and all(0.0 <= v <= 1.0 for v in values)


def _number(value, digits: int = 3, percent: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{100 * value:.1f}" if percent else f"{value:.{digits}g}"


def markdown_table(rows: list[dict]) -> str:
    percent = _fraction_like(rows)
    metric = next((r["metric"] for r in rows if r["metric"]), "metric")
    unit = " (%)" if percent else ""
    lines = [f"| point | seeds | {metric}{unit}: mean ± 95% CI | per seed | tokens/s | wall (s) | CPU (s) | "
             f"final loss | max/mean expert load |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        ci = "" if r["ci95"] is None else f" ± {_number(r['ci95'], percent=percent)}"
        loss_ci = "" if r["final_loss_ci95"] is None else f" ± {_number(r['final_loss_ci95'])}"
        seeds = f"{r['seeds']}" if r["seeds"] == r["planned"] else f"{r['seeds']} of {r['planned']}"
        per_seed = " / ".join(_number(v, percent=percent) for v in r["values"]) or "n/a"
        lines.append(f"| {r['point']} | {seeds} | {_number(r['mean'], percent=percent)}{ci} | {per_seed} | "
                     f"{_number(r['tokens_per_second'], 4)} | {_number(r['wall_seconds'], 4)} | "
                     f"{_number(r['cpu_seconds'], 4)} | "
                     f"{_number(r['final_loss'])}{loss_ci} | {_number(r['max_over_mean_load'])} |")
    return "\n".join(lines) + "\n"


CSV_COLUMNS = ("point", "seeds", "planned", "metric", "mean", "ci95", "values", "tokens_per_second",
               "wall_seconds", "cpu_seconds", "final_loss", "final_loss_ci95", "max_over_mean_load")


def write_csv(rows: list[dict], path: str) -> str:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for r in rows:
            writer.writerow(["" if r[c] is None else ";".join(f"{v:.6g}" for v in r[c]) if c == "values"
                             else f"{r[c]:.6g}" if isinstance(r[c], float) else r[c] for c in CSV_COLUMNS])
    return path


def write_report(root: str, out: str | None = None, figures: bool = True) -> dict:
    """report.md, report.csv and (figures=True) metric.png, loss.png, expert_load.png in
    `out` (default: `root`); -> {"rows": rows, "files": paths written}."""
    out = out or root
    os.makedirs(out, exist_ok=True)
    records = collect_runs(root)
    if not records:
        raise FileNotFoundError(f"{root}: no runs (directories with summary.json or metrics.jsonl)")
    rows = point_rows(records)
    table = markdown_table(rows)
    files = [os.path.join(out, "report.md"), write_csv(rows, os.path.join(out, "report.csv"))]
    with open(files[0], "w") as f:
        f.write(f"# {os.path.basename(os.path.abspath(root))}\n\n{table}")
    if figures:
        from moe_jax.sweeps import figures as drawing

        drawn = (drawing.metric_figure(rows, os.path.join(out, "metric.png")),
                 drawing.loss_figure(records, os.path.join(out, "loss.png")),
                 drawing.expert_load_figure(records, os.path.join(out, "expert_load.png")))
        files += [path for path in drawn if path]
        with open(files[0], "a") as f:
            f.write("".join(f"\n![{os.path.basename(p)}]({os.path.basename(p)})\n" for p in files[2:]))
    return {"rows": rows, "files": files, "table": table}
