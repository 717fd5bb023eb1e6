"""`moe-jax plan`: per-device memory of parameters, gradients and optimizer state.

    moe-jax plan --config configs/deepseek_v3.py --mesh data=1,fsdp=32,expert=8,tensor=1 [--json]

Filled in by `moe_jax.parallel.memory`; this module only holds the command line so that
importing `moe_jax.cli` stays cheap (no jax import until the command runs).
"""

from __future__ import annotations


def add_plan_command(subparsers) -> None:
    """Register `plan` on the `moe-jax` subparsers."""
    p = subparsers.add_parser(
        "plan", help="per-device bytes of params, grads and AdamW state on a mesh (no allocation)")
    p.add_argument("--config", required=True, help="config file, optionally path.py:variant")
    p.add_argument("--mesh", default="data=1,fsdp=-1,expert=1,tensor=1",
                   help="comma-separated AXIS=SIZE over data, fsdp, expert, tensor; at most "
                        "one size may be -1 (the rest of --devices); missing axes are 1")
    p.add_argument("--devices", type=int, default=None,
                   help="total device count (default: the product of the --mesh sizes)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--override", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a config field, e.g. model.param_dtype=bfloat16 (repeatable)")
    p.set_defaults(func=_plan)


def _plan(args) -> int:
    from moe_jax.parallel.memory import run_plan_command

    return run_plan_command(args)
