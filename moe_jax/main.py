"""Run an experiment:

    python -m moe_jax.main --config=experiments/pretrain_arith.py:tiny --workdir=/tmp/run
    python -m moe_jax.main --config=experiments/pretrain_arith.py:tiny --workdir=/tmp/run \\
        --config.train.steps=200 --config.model.num_experts=32

--config names an experiment file (`path.py[:variant]`, from any directory) or a model
preset; the file is executed once and what runs is its own `run`, else the job its
config names (moe_jax.jobs). Rerunning the same command resumes from the newest good
checkpoint in --workdir. On a multi-host job every process runs the same command;
`jax.distributed` is initialised from the environment (see moe_jax.parallel) after the
config is checked and before anything touches a device.
"""

from __future__ import annotations

import argparse
import os
import sys


def parse_args(argv):
    from moe_jax.config import split_overrides

    rest, overrides = split_overrides(argv)
    parser = argparse.ArgumentParser(prog="python -m moe_jax.main", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="experiment file path.py[:variant] or preset name")
    parser.add_argument("--workdir", required=True, help="where checkpoints, metrics and data go")
    args = parser.parse_args(rest)
    return args.config, args.workdir, overrides


def main(argv=None) -> int:
    spec, workdir, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    from absl import logging

    logging.set_verbosity(logging.WARNING)  # orbax logs every file it renames at INFO
    from moe_jax.config import load_experiment
    from moe_jax.jobs import run_experiment, validate_experiment
    from moe_jax.parallel.distributed import initialize_distributed

    from moe_jax.models.config import ConfigError

    try:
        module, config = load_experiment(spec, overrides)
        validate_experiment(module, config)  # before any device work or compilation
    except (ConfigError, FileNotFoundError, AttributeError, ValueError) as error:
        # A bad config is the user's to fix: one line naming the field, no traceback.
        print(f"python -m moe_jax.main: error: {error}", file=sys.stderr)
        return 2
    from moe_jax.train.checkpoint import CheckpointMismatchError
    from moe_jax.train.preemption import EXIT_STATUS, Preempted

    # From JAX_COORDINATOR_ADDRESS etc.; MOE_JAX_DISTRIBUTED=auto lets JAX find its peers
    # itself (Cloud TPU pods, SLURM); a no-op on one process.
    initialize_distributed(auto=os.environ.get("MOE_JAX_DISTRIBUTED") == "auto")
    try:
        summary = run_experiment(module, config, workdir)
    except (ConfigError, CheckpointMismatchError) as error:
        # A config that cannot continue the run in --workdir: refused before anything changed.
        print(f"python -m moe_jax.main: error: {error}", file=sys.stderr)
        return 2
    except Preempted as preempted:
        print(f"python -m moe_jax.main: {preempted}", file=sys.stderr)
        return EXIT_STATUS
    print(summary.headline())
    return 0


if __name__ == "__main__":
    sys.exit(main())
