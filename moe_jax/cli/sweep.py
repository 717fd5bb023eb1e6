"""`moe-jax sweep`: an experiment's sweep() x seeds, one run (workdir) each, then its report.

    moe-jax sweep experiments/pretrain_arith.py:tiny --root runs/ablation --seeds 3 \
        --config.train.steps=600
    moe-jax sweep experiments/pretrain_arith.py:tiny --root runs/ablation --seeds 3 --dry-run
    moe-jax sweep experiments/pretrain_arith.py:tiny --root runs/lr --seeds 2 \
        --grid optimizer.learning_rate=2e-3,5e-3          # a grid of your own instead of sweep()

Each run is `python -m moe_jax.main` in <root>/<grid point>/seed=<n> (train.seed = n),
run on this machine --parallel at a time (default: cores // 2). Rerun the same command
after a stop: finished runs are skipped, interrupted ones resume from their checkpoints.
--dry-run prints one command per run and starts nothing: what a cluster scheduler or
a pod's job queue takes (then `moe-jax report ROOT` once they are done).
"""

from __future__ import annotations

import sys


def _sweep(args) -> int:
    from moe_jax.cli.arguments import error
    from moe_jax.models.config import ConfigError
    from moe_jax.sweeps.plan import plan_sweep

    try:
        runs = plan_sweep(args.experiment, args.root, seeds=args.seeds, overrides=args.override,
                          grid=args.grid)
    except (ConfigError, FileNotFoundError, AttributeError, ValueError) as e:
        return error("sweep", e)
    if args.dry_run:
        for run in runs:
            print(run.shell())
        return 0
    if args.parallel is not None and args.parallel < 1:
        return error("sweep", f"--parallel {args.parallel}: expected at least 1")
    from moe_jax.sweeps.launch import launch, write_index
    from moe_jax.sweeps.report import write_report

    outcomes = launch(runs, parallel=args.parallel)
    write_index(args.root, runs, outcomes)
    report = write_report(args.root)
    print(report["table"], end="")
    print(f"report: {', '.join(report['files'])}")
    stopped = [o for o in outcomes if o.status == "stopped"]
    failed = [o for o in outcomes if o.status == "failed"]
    for o in failed:
        print(f"failed: {o.run.name}: {o.message}", file=sys.stderr)
    if stopped:
        print(f"sweep stopped with {len(stopped)} run(s) unfinished; rerun the same command to "
              f"finish them", file=sys.stderr)
        return 130
    return 1 if failed else 0


def add_sweep_command(subparsers) -> None:
    p = subparsers.add_parser("sweep", help="run an experiment's sweep() x seeds, then report")
    p.add_argument("experiment", help="experiment file path.py[:variant] that defines sweep()")
    p.add_argument("--root", required=True, help="directory of the sweep's runs and report")
    p.add_argument("--seeds", default="1",
                   help="N: train.seed 0..N-1 for every grid point; or a list of seeds, e.g. 1,2")
    p.add_argument("--parallel", type=int, default=None,
                   help="runs at a time on this machine (default: CPU cores // 2)")
    p.add_argument("--grid", action="append", default=[], metavar="FIELD=V1,V2,...",
                   help="sweep these values instead of the file's sweep() (repeatable: the product)")
    p.add_argument("--dry-run", action="store_true", help="print one command per run; start nothing")
    p.add_argument("--override", action="append", default=[], metavar="FIELD=VALUE",
                   help="set a field in every run (same as --config.FIELD=VALUE)")
    p.set_defaults(func=_sweep)
