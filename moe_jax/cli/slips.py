"""`moe-jax slips`: how many of a run's greedy answers are the flawed teacher's slip.

    moe-jax slips runs/grpo_slip/sft --config experiments/sft_reasoning.py:slip --examples 1000
    moe-jax slips runs/grpo_slip [--json]

WORKDIR is a training or GRPO run (its newest checkpoint is read) or a model directory;
--config is the experiment it ran (default: the config the run recorded in
WORKDIR/config.json). The first --examples held-out problems (default: the config's
eval.final_num_examples) are answered greedily and each answer classified as right, the
teacher's slip or another mistake (moe_jax.analysis.slips); a model directory reads its
held-out problems from the config's data directory (data.data_dir, else WORKDIR/data).
"""

from __future__ import annotations

import json

from moe_jax.cli.arguments import add_config_arguments, error, run_config


def _slips(args) -> int:
    from moe_jax.analysis.slips import greedy_slip_counts
    from moe_jax.data.splits import load_data
    from moe_jax.train.checkpoint import CorruptCheckpointError
    from moe_jax.train.loader import load_model

    try:
        config = run_config(args, args.workdir)
        model = load_model(args.workdir, config.model, log=lambda *_: None)
        _, held_out = load_data(config, args.workdir)
    except (FileNotFoundError, ValueError, CorruptCheckpointError) as e:
        return error("slips", e)
    counts, count = greedy_slip_counts(model, held_out, config, args.examples)
    if args.json:
        print(json.dumps({"workdir": args.workdir, "problems": count, **counts}))
    else:
        print(f"{args.workdir}, {count} held-out problems: "
              + ", ".join(f"{k} {v} ({v / count:.1%})" for k, v in counts.items()))
    return 0


def add_slips_command(subparsers) -> None:
    p = subparsers.add_parser("slips", help="how many greedy answers are the flawed teacher's slip")
    p.add_argument("workdir", help="training or GRPO workdir (its newest checkpoint), or a model directory")
    add_config_arguments(p, required=False)
    p.add_argument("--examples", type=int, metavar="N",
                   help="held-out problems to answer (default: the config's eval.final_num_examples)")
    p.add_argument("--json", action="store_true", help="one JSON object: the counts and the problems")
    p.set_defaults(func=_slips)
