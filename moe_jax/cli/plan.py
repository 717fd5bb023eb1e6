"""`moe-jax plan`: per-device memory of parameters, gradients and optimizer state.

    moe-jax plan --config configs/deepseek_v3.py --mesh data=1,fsdp=32,expert=8,tensor=1 [--json]
    moe-jax plan --config configs/deepseek_v2_lite.py --qlora --lora-rank 16 [--seq-len 2048]

Prints, per device, the bytes of parameters, gradients and AdamW state (two float32
moments, plus a float32 master copy when the params are not float32) under the
sharding rules of `moe_jax.parallel.sharding`, from abstract shapes on an AbstractMesh:
no device is needed and nothing is allocated. `--json` prints one object with exact
byte counts. The arithmetic lives in `moe_jax.parallel.memory`; this module holds the
command line.

`--qlora` plans a one-device QLoRA fine-tune instead (NF4 base, bfloat16 adapters,
float32 Adam moments for the adapters only, activations under full remat at the
given batch and length); that arithmetic lives with the adapters, in
`moe_jax.lora.memory`, and is imported only when asked for.
"""

from __future__ import annotations

import json
import time

from moe_jax.cli.arguments import add_config_arguments


def add_plan_command(subparsers) -> None:
    """Register `plan` on the `moe-jax` subparsers."""
    p = subparsers.add_parser(
        "plan", help="per-device bytes of params, grads and AdamW state on a mesh (no allocation)")
    add_config_arguments(p)
    p.add_argument("--mesh", default=None,
                   help="comma-separated AXIS=SIZE over data, fsdp, expert, tensor, e.g. "
                        "data=1,fsdp=32,expert=8,tensor=1; missing axes are 1; one size may be "
                        "-1 (the rest of --devices); required unless --qlora")
    p.add_argument("--devices", type=int, default=None,
                   help="total device count (default: the product of the --mesh sizes)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
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
        return _qlora_plan(args)
    if args.mesh is None:
        raise SystemExit("moe-jax plan: --mesh is required (e.g. --mesh fsdp=8) unless --qlora")
    from moe_jax.config import load_config
    from moe_jax.parallel.memory import format_plan, memory_plan
    from moe_jax.parallel.mesh import parse_mesh_spec

    start = time.time()
    config = load_config(args.config, args.override)
    plan = memory_plan(config.model, parse_mesh_spec(args.mesh), args.devices)
    plan["seconds"] = round(time.time() - start, 2)
    if args.json:
        print(json.dumps(dict(plan, config=args.config)))
    else:
        print(format_plan(plan, f"{args.config}: "))
    return 0


def _qlora_plan(args) -> int:
    from moe_jax.config import load_config
    from moe_jax.lora.adapters import default_lora_config
    from moe_jax.lora.memory import PLAN_TARGETS, format_qlora_plan, qlora_memory_plan, unplanned_expert_note

    config = load_config(args.config, args.override)
    lora = default_lora_config()
    lora.rank = args.lora_rank
    lora.alpha = 2.0 * args.lora_rank
    lora.targets = args.lora_targets.split(",") if args.lora_targets else list(PLAN_TARGETS)
    plan = qlora_memory_plan(config.model, lora, batch_size=args.batch_size, seq_len=args.seq_len)
    if args.json:
        print(json.dumps(dict(plan, config=args.config)))
        return 0
    print(format_qlora_plan(plan, f"{args.config}: "))
    note = unplanned_expert_note(config.model, lora, plan)
    if note:
        print(note)
    return 0
