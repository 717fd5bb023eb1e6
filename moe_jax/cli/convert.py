"""`moe-jax convert`: Hugging Face DeepSeek checkpoints <-> our model directory.

    moe-jax convert --from-hf DeepSeek-V2-Lite/ --to ckpt/v2_lite [--dtype bfloat16] [--no-mtp]
    moe-jax convert --from-ckpt ckpt/v2_lite --to-hf out/ [--dtype bfloat16] [--fp8]
                    [--max-shard-size 5GB]

The model directory is described in moe_jax/interop/checkpoint.py; --from-ckpt reads
anything the one loader reads (moe_jax.train.loader: a model directory, a training
workdir with a recorded config, a quantised export). Nothing is written when
the input is bad: unsupported architectures, missing/unexpected tensors and shape
mismatches are all listed by name and the command exits with status 2.
"""

from __future__ import annotations

import json
import time

from moe_jax.cli.arguments import error

DTYPES = ("float32", "bfloat16", "float16")


def _convert(args) -> int:
    from moe_jax.interop.checkpoint import save_converted
    from moe_jax.interop.hf_config import UnsupportedCheckpointError
    from moe_jax.interop.hf_export import export_hf, source_dtype
    from moe_jax.interop.hf_import import CheckpointMismatchError, import_hf
    from moe_jax.interop.safetensors_io import CheckpointFormatError
    from moe_jax.train.checkpoint import CorruptCheckpointError
    from moe_jax.train.loader import load_model

    start = time.time()
    try:
        if args.from_hf:
            if not args.to or args.to_hf:
                return _usage("--from-hf needs --to CKPT_DIR (and no --to-hf)")
            imported = import_hf(args.from_hf, param_dtype=args.dtype or "float32",
                                 include_mtp=False if args.no_mtp else None, progress=not args.quiet)
            save_converted(args.to, imported.params, imported.router_bias, imported.model_config,
                           imported.hf_config, overwrite=args.overwrite)
            summary = {"from_hf": args.from_hf, "to": args.to, "model_type": imported.hf_config["model_type"],
                       "mtp_depth": imported.model_config.mtp_depth}
        else:
            if not args.to_hf or args.to:
                return _usage("--from-ckpt needs --to-hf DIR (and no --to)")
            loaded = load_model(args.from_ckpt)
            params, router_bias, model_config = loaded.params, loaded.router_bias, loaded.model_config
            hf_config = loaded.hf_config
            dtype = args.dtype or source_dtype(hf_config) or model_config.param_dtype
            export_hf(args.to_hf, params, router_bias, model_config, hf_config=hf_config, dtype=dtype,
                      fp8=args.fp8, max_shard_size=args.max_shard_size, overwrite=args.overwrite,
                      progress=not args.quiet)
            summary = {"from_ckpt": args.from_ckpt, "to_hf": args.to_hf, "dtype": dtype, "fp8": args.fp8}
    except (UnsupportedCheckpointError, CheckpointMismatchError, CheckpointFormatError, CorruptCheckpointError,
            FileExistsError, FileNotFoundError) as e:
        return error("convert", e)
    summary["seconds"] = round(time.time() - start, 2)
    print(json.dumps(summary))
    return 0


def _usage(message: str) -> int:
    return error("convert", message)


def add_convert_command(subparsers):
    """Register `convert` on the `moe-jax` subparsers."""
    p = subparsers.add_parser("convert", help="Hugging Face DeepSeek checkpoint <-> model directory",
                              description=__doc__.split("\n\n")[0])
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--from-hf", metavar="DIR", help="HF checkpoint directory (config.json + safetensors)")
    source.add_argument("--from-ckpt", metavar="DIR", help="a model directory (written by --from-hf) or a "
                        "training workdir")
    p.add_argument("--to", metavar="CKPT_DIR", help="with --from-hf: model directory to write")
    p.add_argument("--to-hf", metavar="DIR", help="with --from-ckpt: HF checkpoint directory to write")
    p.add_argument("--dtype", choices=DTYPES, default=None,
                   help="--from-hf: dtype of the stored weights (default float32); --from-ckpt: dtype "
                        "of the written tensors (default: the original checkpoint's)")
    p.add_argument("--no-mtp", action="store_true", help="--from-hf: leave out multi-token-prediction layers")
    p.add_argument("--fp8", action="store_true", help="--from-ckpt: write 128x128 block-scaled float8 projections")
    p.add_argument("--max-shard-size", default="5GB", help="--from-ckpt: shard size limit, e.g. 5GB, 500MB")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty target directory")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_convert)
    return p
