"""`moe-jax export`: a model as an artefact that runs with jax and numpy alone.

    moe-jax export --checkpoint WORKDIR [--config experiments/pretrain_arith.py:tiny] \
        --out ART [--quantized] [--context N] [--batch B --prompt-len P] [--platforms cpu,cuda]
    python ART/generate.py ART "12+34="          # no moe_jax needed

Writes jax.export-serialized prefill and decode-step functions (StableHLO), the weights
(.npz; int8 values + scales with --quantized, dequantised inside the functions), a JSON
manifest and the standalone loader (see moe_jax/serve/export.py). Without --batch the
batch size and prompt length are symbolic; --batch/--prompt-len fix them and keep the
dropless expert dispatch.
"""

from __future__ import annotations

from moe_jax.cli.arguments import error
from moe_jax.cli.serve import INT8_GROUP, add_model_arguments


def _export(args) -> int:
    from moe_jax.cli.serve import load_served
    from moe_jax.data.tokenizer import get_tokenizer
    from moe_jax.serve.export import export_model
    from moe_jax.train.checkpoint import CorruptCheckpointError

    if (args.batch is None) != (args.prompt_len is None):
        return error("export", "--batch and --prompt-len go together")
    try:
        model_config, params, router_bias, tokenizer = load_served(args)
        manifest = export_model(model_config, params, router_bias, get_tokenizer(tokenizer),
                                args.out, quantize=args.quantized, context=args.context,
                                batch=args.batch, prompt_len=args.prompt_len,
                                platforms=tuple(args.platforms.split(",")), group_size=INT8_GROUP)
    except (FileNotFoundError, ValueError, CorruptCheckpointError) as e:
        return error("export", e)
    shape = "symbolic" if args.batch is None else f"{args.batch} x {args.prompt_len}"
    print(f"moe-jax export: {args.out} ({len(manifest['weights'])} weight arrays, "
          f"{'int8' if args.quantized else 'float'}, batch x prompt {shape}, context "
          f"{manifest['context']}); run: python {args.out}/generate.py {args.out} \"PROMPT\"")
    return 0


def add_export_command(subparsers) -> None:
    s = subparsers.add_parser("export", help="export a model to StableHLO + weights + manifest")
    add_model_arguments(s)
    s.add_argument("--out", required=True, help="the artefact directory")
    s.add_argument("--quantized", action="store_true",
                   help="int8 weights (group 128), dequantised inside the exported functions")
    s.add_argument("--context", type=int, help="cache tokens (default: model.max_seq_len)")
    s.add_argument("--batch", type=int, help="fixed batch size (default: symbolic)")
    s.add_argument("--prompt-len", type=int, help="fixed prompt length, with --batch")
    s.add_argument("--platforms", default="cpu", help="comma-separated: cpu, cuda, tpu")
    s.set_defaults(func=_export)
