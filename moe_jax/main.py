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
import time
import traceback


def parse_args(argv):
    from moe_jax.config import split_overrides

    rest, overrides = split_overrides(argv)
    parser = argparse.ArgumentParser(prog="python -m moe_jax.main", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="experiment file path.py[:variant] or preset name")
    parser.add_argument("--workdir", required=True, help="where checkpoints, metrics and data go")
    args = parser.parse_args(rest)
    return args.config, args.workdir, overrides


LOG_FILE = "log.txt"


def main(argv=None) -> int:
    started = time.time()
    spec, workdir, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    from moe_jax.config import load_experiment
    from moe_jax.jobs import run_experiment, validate_experiment
    from moe_jax.models.config import ConfigError

    try:
        module, config = load_experiment(spec, overrides)
        validate_experiment(module, config)  # before any device work or compilation
    except (ConfigError, FileNotFoundError, AttributeError, ValueError) as error:
        # A bad config is the user's to fix: one line naming the field, no traceback.
        print(f"python -m moe_jax.main: error: {error}", file=sys.stderr)
        return 2
    from moe_jax.parallel.distributed import initialize_distributed, resolve_settings
    from moe_jax.train.checkpoint import CheckpointMismatchError
    from moe_jax.train.preemption import EXIT_STATUS, Preempted
    from moe_jax.train.trainer import NonFiniteLossError

    console = _quiet_console(workdir, resolve_settings().process_id)
    # From JAX_COORDINATOR_ADDRESS etc.; MOE_JAX_DISTRIBUTED=auto lets JAX find its peers
    # itself (Cloud TPU pods, SLURM); a no-op on one process.
    initialize_distributed(auto=os.environ.get("MOE_JAX_DISTRIBUTED") == "auto")
    try:
        summary = run_experiment(module, config, workdir, log=console.say, started=started)
    except (ConfigError, CheckpointMismatchError) as error:
        # A config that cannot continue the run in --workdir, refused before anything
        # changed: the message says what to do, and the workdir (its log included) is
        # left as it was.
        console.refuse(f"python -m moe_jax.main: error: {error}")
        return 2
    except NonFiniteLossError as error:
        # The run went non-finite: the message names the step and the cause; the log keeps
        # what led there.
        console.error(f"python -m moe_jax.main: error: {error}")
        return 2
    except Preempted as preempted:
        console.error(f"python -m moe_jax.main: {preempted}")
        return EXIT_STATUS
    except KeyboardInterrupt:
        console.error("python -m moe_jax.main: interrupted; rerun the same command to resume "
                      "from the last checkpoint")
        return 130
    except Exception as error:  # noqa: BLE001 - a bug's traceback belongs in the log, not on screen
        traceback.print_exc()  # stderr is the log file
        console.error(f"python -m moe_jax.main: error: {type(error).__name__}: {error} "
                      f"(traceback in {console.log_path})")
        return 1
    console.say(summary.headline())
    return 0


def _quiet_console(workdir: str, process_index: int):
    """Library messages to <workdir>/log.txt from here on (moe_jax.train.console); each
    further process of a multi-host job its own log.process<i>.txt beside it."""
    import logging as std_logging

    from absl import logging

    from moe_jax.train.console import Console

    name = LOG_FILE if process_index == 0 else f"log.process{process_index}.txt"
    log_path = os.path.join(workdir, name)
    console = Console.start(log_path)
    logging.set_verbosity(logging.WARNING)  # orbax logs every file it renames at INFO
    std_logging.captureWarnings(True)
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()  # its bars would only fill the log
    console.say(f"library messages and warnings: {log_path}")
    return console


if __name__ == "__main__":
    sys.exit(main())
