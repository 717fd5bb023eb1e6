"""Run an experiment:

    python -m moe_jax.main --config=experiments/pretrain_arith.py:tiny --workdir=/tmp/run
    python -m moe_jax.main --config=experiments/pretrain_arith.py:tiny --workdir=/tmp/run \\
        --config.train.steps=200 --config.model.num_experts=32

Rerunning the same command resumes from the newest good checkpoint in --workdir. On a
multi-host job every process runs the same command; `jax.distributed` is initialised
from the environment (see moe_jax.parallel) before anything touches a device.
"""

from __future__ import annotations

import importlib
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment file, path.py:variant",
                                          lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", None, "where checkpoints, metrics and data go")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every file it renames at INFO
    config = _CONFIG.value
    from moe_jax.train.loop import train_and_evaluate, validate_training_config

    from moe_jax.parallel.distributed import initialize_distributed

    validate_training_config(config)  # before any device work or compilation
    initialize_distributed()  # from JAX_COORDINATOR_ADDRESS etc.; a no-op on one process
    experiment = config.get("experiment", "")
    if experiment:
        # An experiment file may supply its own entry point (e.g. GRPO, distillation).
        module = importlib.import_module(experiment)
        summary = module.run(config, _WORKDIR.value)
    else:
        summary = train_and_evaluate(config, _WORKDIR.value)
    print(f"held-out exact match: {summary['exact_match']:.1%} on {summary['eval_examples']} "
          f"{summary['task']} problems after {summary['step']} steps "
          f"({summary['train_seconds']:.0f}s of training)")
    return 0


if __name__ == "__main__":
    sys.exit(app.run(main))
