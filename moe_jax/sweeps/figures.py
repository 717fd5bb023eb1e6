"""A sweep's figures, and curves of any runs overlaid.

    metric_figure(rows, "metric.png")          the metric per grid point, 95% interval, each seed
    loss_figure(records, "loss.png")           loss curves: each point's mean over seeds, seeds faint
    expert_load_figure(records, "load.png")    per point, expert load by layer (1.0 = balanced)
    compare_figure(records, "compare.png")     loss (and evaluations, if logged) of any runs

Drawn on matplotlib Figure objects, never through pyplot (moe_jax.train.figures): a
script, a server and a notebook's inline backend each keep theirs. Each function returns the
figure's path, or None when the runs logged nothing to draw.
"""

from __future__ import annotations

import numpy as np

from moe_jax.sweeps.runs import RunRecord, group_by_point
from moe_jax.train.figures import new_figure, save


def _figure(width: float, height: float):
    return new_figure((width, height))


def _save(fig, path: str) -> str:
    return save(fig, path, dpi=110)


def _colors(n: int):
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "viridis"]
    return [cmap(i if n <= 10 else i / max(n - 1, 1)) for i in range(n)]


def metric_figure(rows: list[dict], path: str) -> str | None:
    rows = [r for r in rows if r["values"]]
    if not rows:
        return None
    percent = all(0.0 <= v <= 1.0 for r in rows for v in r["values"])
    scale = 100.0 if percent else 1.0
    fig = _figure(max(4.0, 0.9 * len(rows) + 1.5), 4.0)
    ax = fig.add_subplot()
    x = np.arange(len(rows))
    for i, r in enumerate(rows):
        values = np.asarray(r["values"]) * scale
        ax.scatter(np.full(len(values), i) + np.linspace(-0.12, 0.12, len(values)), values, s=12,
                   color="0.55", zorder=2, label="seed" if i == 0 else None)
        ax.errorbar(i, r["mean"] * scale, yerr=None if r["ci95"] is None else r["ci95"] * scale, fmt="o",
                    color="C0", capsize=5, zorder=3, label="mean, 95% CI" if i == 0 else None)
    ax.set_xticks(x, [r["point"] for r in rows], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(rows[0]["metric"] + (" (%)" if percent else ""))
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _mean_curve(runs: list[RunRecord], key: str):
    """Steps every run logged `key` at, and the mean over runs there."""
    curves = [r.curve(key) for r in runs]
    curves = [(s, v) for s, v in curves if len(s)]
    if not curves:
        return np.zeros(0), np.zeros(0)
    common = sorted(set.intersection(*(set(s.tolist()) for s, _ in curves)))
    values = [np.interp(common, s, v) for s, v in curves]
    return np.asarray(common), np.mean(values, axis=0)


def loss_figure(records: list[RunRecord], path: str, key: str = "loss") -> str | None:
    groups = group_by_point(records)
    if not any(len(r.curve(key)[0]) for r in records):
        return None
    fig = _figure(7.0, 4.5)
    ax = fig.add_subplot()
    for color, (point, runs) in zip(_colors(len(groups)), groups.items()):
        for r in runs:
            steps, values = r.curve(key)
            ax.plot(steps, values, color=color, alpha=0.25, linewidth=0.8)
        steps, mean = _mean_curve(runs, key)
        if len(steps):
            ax.plot(steps, mean, color=color, linewidth=1.8, label=f"{point} (n={len(runs)})")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(f"training {key}")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    return _save(fig, path)


def expert_load_figure(records: list[RunRecord], path: str) -> str | None:
    """One heatmap per grid point: [MoE layer, expert] load x E, mean over its seeds."""
    panels = []
    for point, runs in group_by_point(records).items():
        loads = [r.expert_load for r in runs if r.expert_load is not None]
        shapes = {load.shape for load in loads}
        if loads and len(shapes) == 1:
            panels.append((point, np.mean(loads, axis=0)))
    if not panels:
        return None
    top = max(2.0, max(float(p.max()) for _, p in panels))
    columns = min(3, len(panels))
    rows = -(-len(panels) // columns)
    fig = _figure(3.6 * columns, 2.5 * rows + 0.6)
    fig.subplots_adjust(hspace=0.55, wspace=0.3, right=0.8)  # room for each panel's title and the bar
    from matplotlib.colors import TwoSlopeNorm

    # A diverging map centred on 1.0 (balanced): starved experts blue, busy ones red.
    norm = TwoSlopeNorm(vmin=0.0, vcenter=1.0, vmax=top)
    image = None
    for i, (point, load) in enumerate(panels):
        ax = fig.add_subplot(rows, columns, i + 1)
        image = ax.imshow(load, aspect="auto", cmap="RdBu_r", norm=norm, interpolation="nearest")
        ax.set_title(point, fontsize=8)
        ax.set_xlabel("expert", fontsize=7)
        ax.set_ylabel("MoE layer", fontsize=7)
        ax.set_xticks(range(load.shape[1]))
        ax.set_yticks(range(load.shape[0]))
        ax.tick_params(labelsize=6)
    fig.colorbar(image, ax=fig.axes, label="load x E (1 = balanced)", shrink=0.8)
    return save(fig, path, dpi=110, tight=False)  # tight_layout cannot place a shared colorbar


def compare_figure(records: list[RunRecord], path: str) -> str | None:
    """Training loss of each run, and every logged evaluation (eval/*), overlaid."""
    evals = sorted({k for r in records for rec in r.metrics.values() for k in rec
                    if k.startswith("eval/") and k != "eval/examples"})
    if not any(len(r.curve("loss")[0]) for r in records) and not evals:
        return None
    fig = _figure(6.0 * (1 + bool(evals)), 4.2)
    ax = fig.add_subplot(1, 1 + bool(evals), 1)
    for color, r in zip(_colors(len(records)), records):
        steps, values = r.curve("loss")
        ax.plot(steps, values, color=color, label=r.point)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    if evals:
        ax = fig.add_subplot(1, 2, 2)
        for color, r in zip(_colors(len(records)), records):
            for style, key in zip(("-", "--", ":", "-."), evals):
                steps, values = r.curve(key)
                if len(steps):
                    ax.plot(steps, values, style, marker="o", markersize=3, color=color,
                            label=f"{r.point}: {key[len('eval/'):]}")
        ax.set_xlabel("step")
        ax.set_ylabel("evaluation")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)
