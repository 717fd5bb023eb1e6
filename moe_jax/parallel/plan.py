"""`moe-jax plan`: per-device memory of parameters, gradients and optimizer state.

    moe-jax plan --config configs/deepseek_v3.py --mesh data=1,fsdp=32,expert=8,tensor=1 [--json]
    moe-jax plan --config configs/deepseek_v2_lite.py --qlora --lora-rank 16 [--seq-len 2048]

Prints, per device, the bytes of parameters, gradients and AdamW state (two float32
moments, plus a float32 master copy when the params are not float32) under the
sharding rules of `moe_jax.parallel.sharding`, from abstract shapes on an AbstractMesh:
no device is needed and nothing is allocated. `--json` prints one object with exact
byte counts. The arithmetic lives in `moe_jax.parallel.memory`; this module only holds
the command line, so that importing `moe_jax.cli` stays cheap.

`--qlora` plans a one-device QLoRA fine-tune instead (NF4 base, bfloat16 adapters,
float32 Adam moments for the adapters only, activations under full remat at the
given batch and length); that arithmetic lives with the adapters, in
`moe_jax.lora.memory`, and is imported only when asked for.
"""

from __future__ import annotations


def add_plan_command(subparsers) -> None:
    """Register `plan` on the `moe-jax` subparsers."""
    p = subparsers.add_parser(
        "plan", help="per-device bytes of params, grads and AdamW state on a mesh (no allocation)")
    p.add_argument("--config", required=True, help="config file, optionally path.py:variant")
    p.add_argument("--mesh", default=None,
                   help="comma-separated AXIS=SIZE over data, fsdp, expert, tensor, e.g. "
                        "data=1,fsdp=32,expert=8,tensor=1; missing axes are 1; one size may be "
                        "-1 (the rest of --devices); required unless --qlora")
    p.add_argument("--devices", type=int, default=None,
                   help="total device count (default: the product of the --mesh sizes)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--override", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a config field, e.g. model.param_dtype=bfloat16 (repeatable)")
    q = p.add_argument_group("QLoRA fine-tune on one device")
    q.add_argument("--qlora", action="store_true",
                   help="plan a QLoRA fine-tune (NF4 base, adapters) instead of full training")
    q.add_argument("--lora-rank", type=int, default=16, help="adapter rank (default 16)")
    q.add_argument("--lora-targets", default="",
                   help="comma-separated adapter targets: group names (attention, dense_mlp, "
                        "shared_experts, routed_experts) or regexes over parameter paths "
                        "(default attention,dense_mlp,shared_experts)")
    q.add_argument("--batch-size", type=int, default=1, help="sequences per step (default 1)")
    q.add_argument("--seq-len", type=int, default=2048, help="tokens per sequence (default 2048)")
    p.set_defaults(func=_plan)


def _plan(args) -> int:
    if args.qlora:
        from moe_jax.lora.memory import run_qlora_plan

        return run_qlora_plan(args)
    if args.mesh is None:
        raise SystemExit("moe-jax plan: --mesh is required (e.g. --mesh fsdp=8) unless --qlora")
    from moe_jax.parallel.memory import run_plan_command

    return run_plan_command(args)
