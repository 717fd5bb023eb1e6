"""Arguments shared by the subcommands."""

from __future__ import annotations


def add_config_arguments(parser, required: bool = True) -> None:
    """--config SPEC and --override FIELD=VALUE (`moe_jax.cli.main` turns every
    `--config.x=y` on the command line into an override too)."""
    parser.add_argument("--config", required=required,
                        help="config file (path.py[:variant]) or preset name (tiny, deepseek_v2_lite, deepseek_v3)")
    parser.add_argument("--override", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a config field, e.g. model.num_experts=64 (repeatable; "
                             "same as --config.model.num_experts=64)")


def error(command: str, message) -> int:
    """One clear line on stderr and the usage exit status."""
    import sys

    print(f"moe-jax {command}: error: {message}", file=sys.stderr)
    return 2


def add_watermark_arguments(parser) -> None:
    """--watermark-key K (turns the watermark on) and its gamma, delta and context."""
    group = parser.add_argument_group("watermark (moe_jax.infer.watermark)")
    group.add_argument("--watermark-key", type=int, metavar="K",
                       help="draw with the green-list watermark of this secret integer key")
    group.add_argument("--watermark-gamma", type=float, default=0.25, help="green share of the vocabulary")
    group.add_argument("--watermark-delta", type=float, default=2.0, help="bias added to green logits")
    group.add_argument("--watermark-context", type=int, default=1, help="previous tokens hashed (h)")


def watermark_from_args(args):
    """The Watermark the --watermark-* arguments describe, or None without a key; a bad
    value raises ConfigError (a ValueError) naming the field."""
    if args.watermark_key is None:
        return None
    from moe_jax.infer.watermark import Watermark

    return Watermark(key=args.watermark_key, gamma=args.watermark_gamma, delta=args.watermark_delta,
                     context=args.watermark_context)


def run_config(args, workdir: str):
    """The config a finished run is read with: --config (with its overrides), else the one
    the run recorded in its workdir with the overrides applied; FileNotFoundError if neither."""
    from moe_jax.config import apply_override, load_config
    from moe_jax.train.loader import read_run_config

    if args.config:
        return load_config(args.config, args.override)
    config = read_run_config(workdir)
    if config is None:
        raise FileNotFoundError(f"{workdir} records no config.json: name the experiment it ran (--config)")
    for override in args.override:
        apply_override(config, override)
    return config
