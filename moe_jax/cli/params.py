"""`moe-jax params`: total and activated parameters of a config, by component.

    moe-jax params --config deepseek_v3 [--json]
    moe-jax params --config configs/tiny.py --config.model.num_experts=64 --json
"""

from __future__ import annotations

import json
import time

from moe_jax.cli.arguments import add_config_arguments


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


def add_params_command(subparsers) -> None:
    p = subparsers.add_parser("params", help="total and activated parameters of a config")
    add_config_arguments(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_params)
