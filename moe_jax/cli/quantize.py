"""`moe-jax quantize`: int8 / int4 checkpoints from a trained one, with their figures.

    moe-jax quantize --config experiments/pretrain_arith.py:tiny --checkpoint WORKDIR \
        --out QROOT [--bits 8,4] [--group-size 128] [--eval 500] [--json]

Writes QROOT/float32 (the same layout unquantised: the byte baseline) and QROOT/int<b>
for each requested width (the format: moe_jax.interop.quantized), then reports per checkpoint the
bytes of its tensor file, the ratio to float32 and, with --eval N, the held-out exact
match on N problems of the config's task, decoded greedily from the checkpoint as
written (read back and dequantised). Held-out problems come from the config's data
directory (default <WORKDIR>/data, where training left them). `moe-jax sample
--checkpoint QROOT/int8` runs a quantised checkpoint.
"""

from __future__ import annotations

import json
import os

from moe_jax.cli.arguments import add_config_arguments, error


def _bits_list(text: str) -> list[int]:
    try:
        bits = [int(b) for b in text.split(",") if b.strip()]
    except ValueError:
        bits = []
    if not bits or any(b not in (4, 8) for b in bits):
        raise ValueError(f"--bits {text!r}: expected a comma-separated list of 8 and 4")
    return bits


def _held_out(config, workdir: str):
    from moe_jax.data.tfds_builders import load_task_split

    d = config.data
    data_dir = d.data_dir or os.path.join(workdir, "data")
    return load_task_split(d.task, "test", data_dir, num_train=d.num_train, num_test=d.num_test,
                           seed=d.seed, **d.difficulty)


def quantize_and_measure(config, checkpoint: str, out: str, bits: list[int], group_size: int,
                         num_eval: int, log=print) -> list[dict]:
    """The whole command as a function: one row per checkpoint (float32 first)."""
    from moe_jax.analysis.exact_match import exact_match
    from moe_jax.data.tokenizer import get_tokenizer
    from moe_jax.quant.checkpoint import save_quantized
    from moe_jax.train.loader import load_model

    loaded = load_model(checkpoint, config.model, log=log)
    params, router_bias = loaded.params, loaded.router_bias
    rows = []
    for b in [None] + bits:
        name = f"int{b}" if b else "float32"
        directory = os.path.join(out, name)
        written = save_quantized(directory, params, router_bias, loaded.model_config, b, group_size,
                                 overwrite=True)
        rows.append({"checkpoint": name, "dir": directory, "bytes": written["bytes"],
                     "quantized_tensors": written["quantized"]})
    for row in rows:
        row["ratio_vs_float32"] = round(rows[0]["bytes"] / row["bytes"], 3)
    if num_eval:
        tokenizer = get_tokenizer(config.data.tokenizer)
        # Held-out problems where training left them, else generated beside the outputs
        # (never inside a model directory someone else wrote).
        source = _held_out(config, loaded.path if loaded.source == "workdir" else out)
        e = config.eval
        for row in rows:
            written = load_model(row["dir"], log=log)  # read back: what a user of it would get
            accuracy, count, _ = exact_match(written.model_config, written.params, written.router_bias,
                                             source, tokenizer,
                                             task=config.data.task, num_examples=num_eval,
                                             batch_size=e.batch_size, max_new_tokens=e.max_new_tokens)
            row["exact_match"], row["eval_examples"] = accuracy, count
            log(f"{row['checkpoint']}: {accuracy:.1%} exact match on {count} held-out problems")
    return rows


def _quantize(args) -> int:
    from moe_jax.config import load_config
    from moe_jax.train.checkpoint import CorruptCheckpointError

    try:
        bits = _bits_list(args.bits)
        if args.group_size <= 0:
            raise ValueError(f"--group-size {args.group_size}: expected a positive integer")
        config = load_config(args.config, args.override)
        rows = quantize_and_measure(config, args.checkpoint, args.out, bits, args.group_size,
                                    args.eval, log=(lambda *_: None) if args.json else print)
    except (FileNotFoundError, ValueError, CorruptCheckpointError) as e:
        return error("quantize", e)
    if args.json:
        print(json.dumps({"group_size": args.group_size, "checkpoints": rows}))
        return 0
    print(f"{'checkpoint':10s} {'bytes':>12s} {'x smaller':>9s} {'exact match':>12s}")
    for row in rows:
        acc = f"{row['exact_match']:.1%}" if "exact_match" in row else "-"
        print(f"{row['checkpoint']:10s} {row['bytes']:12d} {row['ratio_vs_float32']:9.2f} {acc:>12s}")
    return 0


def add_quantize_command(subparsers) -> None:
    q = subparsers.add_parser("quantize", help="int8/int4 weight-only checkpoints, bytes and accuracy")
    add_config_arguments(q)
    q.add_argument("--checkpoint", required=True, help="training workdir or model directory")
    q.add_argument("--out", required=True, help="directory for float32/, int8/, int4/")
    q.add_argument("--bits", default="8,4", help="comma-separated widths: 8, 4 (default 8,4)")
    q.add_argument("--group-size", type=int, default=128,
                   help="entries per scale along a weight's input axis (fewer when the axis is shorter)")
    q.add_argument("--eval", type=int, default=0, metavar="N",
                   help="held-out exact match on N problems for every checkpoint (0: skip)")
    q.add_argument("--json", action="store_true", help="one JSON object with every figure")
    q.set_defaults(func=_quantize)
