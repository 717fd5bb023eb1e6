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
