"""`moe-jax plan`: per-device memory of parameters, gradients and optimizer state.

    moe-jax plan --config configs/deepseek_v3.py --mesh data=1,fsdp=32,expert=8,tensor=1 [--json]

Prints, per device, the bytes of parameters, gradients and AdamW state (two float32
moments, plus a float32 master copy when the params are not float32) under the
sharding rules of `moe_jax.parallel.sharding`, from abstract shapes on an AbstractMesh:
no device is needed and nothing is allocated. `--json` prints one object with exact
byte counts. The arithmetic lives in `moe_jax.parallel.memory`; this module only holds
the command line, so that importing `moe_jax.cli` stays cheap.
"""

from __future__ import annotations


def add_plan_command(subparsers) -> None:
    """Register `plan` on the `moe-jax` subparsers."""
    p = subparsers.add_parser(
        "plan", help="per-device bytes of params, grads and AdamW state on a mesh (no allocation)")
    p.add_argument("--config", required=True, help="config file, optionally path.py:variant")
    p.add_argument("--mesh", required=True,
                   help="comma-separated AXIS=SIZE over data, fsdp, expert, tensor, e.g. "
                        "data=1,fsdp=32,expert=8,tensor=1; missing axes are 1; one size may be "
                        "-1 (the rest of --devices)")
    p.add_argument("--devices", type=int, default=None,
                   help="total device count (default: the product of the --mesh sizes)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--override", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a config field, e.g. model.param_dtype=bfloat16 (repeatable)")
    p.set_defaults(func=_plan)


def _plan(args) -> int:
    from moe_jax.parallel.memory import run_plan_command

    return run_plan_command(args)
