"""`moe-jax compare`: the curves of any runs overlaid in one figure.

    moe-jax compare runs/arith runs/ablation/router=softmax,num_experts=4/seed=0 --out cmp.png

Training loss of each run (log scale) and, beside it, every evaluation it logged
(e.g. held-out exact match), from each workdir's metrics.jsonl.
"""

from __future__ import annotations

import os


def _compare(args) -> int:
    from moe_jax.cli.arguments import error
    from moe_jax.sweeps.figures import compare_figure
    from moe_jax.sweeps.runs import read_run

    missing = [w for w in args.workdirs if not os.path.exists(os.path.join(w, "metrics.jsonl"))]
    if missing:
        return error("compare", f"{missing[0]}: no metrics.jsonl (expected a run's workdir)")
    labels = _short_labels(args.workdirs)
    records = [read_run(w, point=label) for w, label in zip(args.workdirs, labels)]
    path = compare_figure(records, args.out)
    if path is None:
        return error("compare", "the runs logged no loss and no evaluation")
    for label, record in zip(labels, records):
        loss = record.final_loss
        value = "" if record.summary is None else f", {record.summary.headline()}"
        print(f"{label}: final loss {'n/a' if loss is None else f'{loss:.4g}'}{value}")
    print(f"figure: {path}")
    return 0


def _short_labels(workdirs: list[str]) -> list[str]:
    """Workdirs without the path they all share."""
    paths = [os.path.normpath(w) for w in workdirs]
    common = os.path.commonpath(paths) if len(paths) > 1 else os.path.dirname(paths[0])
    labels = [os.path.relpath(p, common) if common else p for p in paths]
    return [label if label != "." else p for label, p in zip(labels, paths)]


def add_compare_command(subparsers) -> None:
    p = subparsers.add_parser("compare", help="overlay the curves of any runs")
    p.add_argument("workdirs", nargs="+", help="run workdirs (each with metrics.jsonl)")
    p.add_argument("--out", default="compare.png", help="the figure's path (default: compare.png)")
    p.set_defaults(func=_compare)
