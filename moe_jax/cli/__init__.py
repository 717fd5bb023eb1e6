"""The `moe-jax` command: inspect configs, convert, quantise and sample models, read finished runs.

    moe-jax params --config deepseek_v3 [--json]
    moe-jax demo [--seconds 60]
    moe-jax plan --config deepseek_v3 --mesh data=1,fsdp=32,expert=8,tensor=1 [--json]
    moe-jax convert --from-hf HF_DIR --to CKPT | --from-ckpt CKPT --to-hf HF_DIR
    moe-jax sample --checkpoint WORKDIR --prompt "12+34=" [--temperature 0.7]
    moe-jax quantize --config X --checkpoint WORKDIR --out QROOT [--bits 8,4] [--eval 500]
    moe-jax serve --checkpoint WORKDIR [--port 8000] [--max-batch 8] [--quantized]
    moe-jax export --checkpoint WORKDIR --out ART [--quantized]
    moe-jax sweep EXPERIMENT.py:variant --root DIR [--seeds N] [--parallel P] [--dry-run]
    moe-jax report DIR
    moe-jax compare WORKDIR [WORKDIR ...] [--out compare.png]
    moe-jax heldout-loss --workdir WORKDIR [--config X] [--batches 8]
    moe-jax slips WORKDIR [--config X] [--examples N]
    moe-jax watermark detect --key K [--gamma 0.25 --context 1] TEXT_OR_FILE

Every subcommand that takes --config also takes overrides of its fields as
`--config.model.num_experts=16`, as `python -m moe_jax.main` does (`--override
model.num_experts=16` is the same). A config is a file (`path.py[:variant]`) or a preset
name (tiny, deepseek_v2_lite, deepseek_v3). Each subcommand lives in its own module
here and imports what it needs when it runs, so `moe-jax --help` stays fast.
"""

from __future__ import annotations

import argparse
import sys

from moe_jax.cli.compare import add_compare_command
from moe_jax.cli.convert import add_convert_command
from moe_jax.cli.demo import add_demo_command
from moe_jax.cli.export import add_export_command
from moe_jax.cli.heldout_loss import add_heldout_loss_command
from moe_jax.cli.params import add_params_command
from moe_jax.cli.plan import add_plan_command
from moe_jax.cli.quantize import add_quantize_command
from moe_jax.cli.report import add_report_command
from moe_jax.cli.sample import add_sample_command
from moe_jax.cli.serve import add_serve_command
from moe_jax.cli.slips import add_slips_command
from moe_jax.cli.sweep import add_sweep_command
from moe_jax.cli.watermark import add_watermark_command

COMMANDS = (add_params_command, add_demo_command, add_plan_command, add_convert_command,
            add_sample_command, add_quantize_command, add_serve_command, add_export_command,
            add_sweep_command, add_report_command, add_compare_command, add_heldout_loss_command,
            add_slips_command, add_watermark_command)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moe-jax", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv=None) -> int:
    from moe_jax.config import split_overrides

    parser = build_parser()
    rest, overrides = split_overrides(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(rest)
    if overrides:
        if not hasattr(args, "override"):
            parser.error(f"moe-jax {args.command} takes no config overrides ({overrides[0]})")
        args.override = list(args.override) + overrides
    return args.func(args)
