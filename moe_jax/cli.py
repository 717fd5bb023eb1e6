"""The `moe-jax` command: inspect configs and run small jobs.

    moe-jax params --config configs/deepseek_v3.py [--json]
    moe-jax demo [--seconds 60]
    moe-jax plan --config configs/deepseek_v3.py --mesh data=1,fsdp=32,expert=8,tensor=1 [--json]
    moe-jax sample --config X --checkpoint WORKDIR --prompt "12+34=" [--temperature 0.7]
    moe-jax quantize --config X --checkpoint WORKDIR --out QROOT [--bits 8,4] [--eval 500]
    moe-jax serve --config X --checkpoint WORKDIR [--port 8000] [--max-batch 8]
    moe-jax export --config X --checkpoint WORKDIR --out ART [--quantized]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from moe_jax.parallel.plan import add_plan_command
from moe_jax.interop.cli import add_convert_command
from moe_jax.infer.cli import add_sample_command
from moe_jax.quant.cli import add_quantize_command
from moe_jax.serve.cli import add_serve_command
from moe_jax.serve.export_cli import add_export_command


def _params(args) -> int:
    from moe_jax.config import load_config
    from moe_jax.models.param_count import count_parameters, format_count

    start = time.time()
    config = load_config(args.config, args.override)
    counts = count_parameters(config.model)
    counts["seconds"] = round(time.time() - start, 2)
    if args.json:
        print(json.dumps(counts))
        return 0
    print(f"{args.config}: {format_count(counts['total'])} total, "
          f"{format_count(counts['activated'])} activated per token")
    for section in ("main", "mtp"):
        if not counts[section]:
            continue
        print(f"  {section}:")
        for name, c in counts[section].items():
            print(f"    {name:16s} {format_count(c['total']):>10s} total  "
                  f"{format_count(c['activated']):>10s} activated")
    if counts["mtp_total"]:
        print(f"  MTP modules: {format_count(counts['mtp_total'])} total, "
              f"{format_count(counts['mtp_activated'])} activated (head included)")
    return 0


def _demo(args) -> int:
    from moe_jax.demo import run_demo

    result = run_demo(seconds=args.seconds)
    return 0 if result["last_loss"] < result["first_loss"] else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moe-jax", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("params", help="total and activated parameters of a config")
    p.add_argument("--config", required=True, help="config file, optionally path.py:variant")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--override", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a config field, e.g. model.num_experts=64 (repeatable)")
    p.set_defaults(func=_params)
    d = sub.add_parser("demo", help="train the tiny model on CPU for about a minute")
    d.add_argument("--seconds", type=float, default=60.0)
    d.set_defaults(func=_demo)
    add_plan_command(sub)
    add_convert_command(sub)
    add_sample_command(sub)
    add_quantize_command(sub)
    add_serve_command(sub)
    add_export_command(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
