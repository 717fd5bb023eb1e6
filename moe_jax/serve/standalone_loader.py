"""Greedy generation from a `moe-jax export` artefact with jax and numpy only.

This file is copied into every artefact as ART/generate.py and imports nothing from
moe_jax:  python ART/generate.py ART "12+34=" ["7-3=" ...] [--max-new-tokens 64]
Text prompts need the manifest's char_vocabulary (ids 0-2 are pad, bos, eos); with
--ids each prompt is comma-separated token ids, <bos> included. Prints one JSON line per
prompt: {"prompt": ids, "tokens": the new ids up to and including <eos>, "text"}.
In Python: `generate(ART, [[1, 4, 5]], 64)`.
"""
import argparse
import json

import jax
import numpy as np
from jax import export


def generate(art, prompts, max_new_tokens):
    """prompts: token id lists -> the greedy new ids of each, cut after its first <eos>."""
    manifest = json.load(open(f"{art}/manifest.json"))
    npz = np.load(f"{art}/weights.npz")  # no pickle: allow_pickle defaults to False
    weights = [npz[w["key"]] for w in manifest["weights"]]
    prefill, decode = (export.deserialize(bytearray(open(f"{art}/{n}.jax", "rb").read()))
                       for n in ("prefill", "decode"))
    width = manifest["prompt_len"] or max(map(len, prompts))  # left-padded, as exported
    tokens = np.full((manifest["batch"] or len(prompts), width), manifest["pad_id"], np.int32)
    lengths = np.zeros(len(tokens), np.int32)  # rows past the prompts stay empty
    for row, ids in enumerate(prompts):
        tokens[row, width - len(ids):], lengths[row] = ids, len(ids)
    with jax.default_device(jax.devices(manifest["platforms"][0])[0]):
        logits, cache = prefill.call(weights, tokens, lengths)
        new = [np.argmax(np.asarray(logits), axis=-1).astype(np.int32)]
        while len(new) < max_new_tokens:
            logits, cache = decode.call(weights, cache, new[-1])
            new.append(np.argmax(np.asarray(logits), axis=-1).astype(np.int32))
    out = np.stack(new, axis=1)[:len(prompts)].tolist()
    eos = manifest["eos_id"]
    return [row[:row.index(eos) + 1] if eos in row else row for row in out]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="greedy continuations from an export")
    parser.add_argument("art")
    parser.add_argument("prompts", nargs="+", help="text, or comma-separated ids with --ids")
    parser.add_argument("--ids", action="store_true")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()
    manifest = json.load(open(f"{args.art}/manifest.json"))
    vocab, bos = manifest["char_vocabulary"], manifest["bos_id"]
    prompts = ([[int(i) for i in p.split(",")] for p in args.prompts] if args.ids else
               [[bos] * (bos is not None) + [vocab.index(c, 3) for c in p] for p in args.prompts])
    for prompt, ids in zip(prompts, generate(args.art, prompts, args.max_new_tokens)):
        text = "".join(vocab[i] for i in ids if i > 2) if vocab else None  # 0-2: pad, bos, eos
        print(json.dumps({"prompt": prompt, "tokens": ids, "text": text}))
