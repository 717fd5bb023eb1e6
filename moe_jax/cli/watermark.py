"""`moe-jax watermark detect`: is a text watermarked with this key?

    moe-jax watermark detect --key K [--gamma 0.25 --context 1] [--tokenizer char] TEXT_OR_FILE
    moe-jax watermark detect --config experiments/watermark.py:tiny --config.watermark.key=K FILE

TEXT_OR_FILE is a file to read, `-` for standard input, or the text itself. The text is
tokenized as the model's sampler saw it (the char tokenizer by default, or a
tokenizer.json), and the green-list test of moe_jax.infer.watermark is run: it prints
the z-score and the one-sided p-value (the chance that a text written without the key
scores as high). Only the key, gamma and the context width h matter, not delta or the
model. Each distinct (h + 1)-gram is counted once (repeats ignored, as Kirchenbauer et
al. suggest); --all-tokens counts every token instead. With --config, its `watermark`
section and data.tokenizer give the defaults; the flags win.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from moe_jax.cli.arguments import add_config_arguments, error


def read_text(argument: str) -> str:
    """A file's contents, standard input for `-`, else the argument itself."""
    if argument == "-":
        return sys.stdin.read()
    if os.path.isfile(argument):
        with open(argument, encoding="utf-8") as f:
            return f.read()
    return argument


def _settings(args):
    """-> (Watermark, tokenizer name) from --config's section and the flags."""
    from moe_jax.config import load_config
    from moe_jax.infer.watermark import Watermark, watermark_config

    section, tokenizer = watermark_config(), "char"
    if args.config:
        config = load_config(args.config, args.override)
        section.update(config.get("watermark", {}))
        tokenizer = config.get("data", {}).get("tokenizer", tokenizer)
    key = args.key if args.key is not None else section.key
    if key == -1:
        raise ValueError("--key: the watermark's secret integer key is required")
    watermark = Watermark(key=int(key), gamma=section.gamma if args.gamma is None else args.gamma,
                          delta=section.delta,
                          context=section.context if args.context is None else args.context)
    return watermark, args.tokenizer or tokenizer


def _detect(args) -> int:
    from moe_jax.data.tokenizer import get_tokenizer
    from moe_jax.infer.watermark import detect

    try:
        watermark, tokenizer_name = _settings(args)
        ids = get_tokenizer(tokenizer_name).encode(read_text(args.text))
    except (FileNotFoundError, ValueError, UnicodeDecodeError) as e:
        return error("watermark detect", e)
    result = detect(ids, watermark, ignore_repeats=not args.all_tokens)
    rule = "every token" if args.all_tokens else "each (context, token) pair once"
    if args.json:
        print(json.dumps({**result._asdict(), "gamma": watermark.gamma,
                          "context": watermark.context, "counted": rule}))
    elif result.scored == 0:
        print(f"nothing to score: {result.tokens} token(s), the test needs more than "
              f"--context {watermark.context}")
    else:
        print(f"z = {result.z:.3f}  p = {result.p_value:.3g}  ({result.green} green of "
              f"{result.scored} scored tokens; {result.tokens} tokens; {rule}; "
              f"gamma {watermark.gamma}, context {watermark.context})")
    return 0


def add_watermark_command(subparsers) -> None:
    w = subparsers.add_parser("watermark", help="detect the sampler's green-list watermark in a text")
    actions = w.add_subparsers(dest="action", required=True)
    d = actions.add_parser("detect", help="z-score and p-value of a text for a key",
                           description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(d, required=False)
    d.add_argument("--key", type=int, help="the secret integer key the text was sampled with")
    d.add_argument("--gamma", type=float, help="green share of the vocabulary (default 0.25)")
    d.add_argument("--context", type=int, help="previous tokens hashed, h (default 1)")
    d.add_argument("--tokenizer", help="'char' or a tokenizer.json path (default: char)")
    d.add_argument("--all-tokens", action="store_true",
                   help="count repeated (context, token) pairs too")
    d.add_argument("--json", action="store_true", help="one JSON object")
    d.add_argument("text", metavar="TEXT_OR_FILE", help="a file, - for standard input, or the text")
    d.set_defaults(func=_detect)
