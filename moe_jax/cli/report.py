"""`moe-jax report`: the table and figures of a sweep's runs (what `moe-jax sweep` ends with).

    moe-jax report runs/ablation [--out DIR]

Writes report.md and report.csv (one row per grid point: mean and 95% Student-t
interval over seeds of the run's metric, tokens/s, wall time, final loss, max/mean
expert load) and metric.png, loss.png, expert_load.png, and prints the table.
"""

from __future__ import annotations


def _report(args) -> int:
    from moe_jax.cli.arguments import error
    from moe_jax.sweeps.report import write_report

    try:
        report = write_report(args.root, out=args.out)
    except FileNotFoundError as e:
        return error("report", e)
    print(report["table"], end="")
    print(f"report: {', '.join(report['files'])}")
    return 0


def add_report_command(subparsers) -> None:
    p = subparsers.add_parser("report", help="table and figures of a sweep's runs")
    p.add_argument("root", help="a sweep's --root (or any directory of runs)")
    p.add_argument("--out", default=None, help="where to write them (default: ROOT)")
    p.set_defaults(func=_report)
