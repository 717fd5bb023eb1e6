"""`moe-jax sample`: complete a prompt with a trained checkpoint.

    moe-jax sample --config experiments/pretrain_arith.py:tiny --checkpoint WORKDIR \
        --prompt "12+34=" [--prompt ...] [--temperature 0.7 --top-k 0 --top-p 0.95]
        [--max-new-tokens 64] [--seed 0] [--tokenizer char] [--json]

--checkpoint accepts a training workdir (its newest `checkpoints/<step>/state`), its
`checkpoints/` directory, one `<step>` directory, a `state` directory itself, or a
`moe-jax convert` output directory (whose model_config.json makes --config optional), or
a `moe-jax quantize` output directory (int8/int4 weights, dequantised on load).
The prompt is encoded as training does (<bos> + text); generation stops at <eos>.
"""

from __future__ import annotations

import json
import os
import sys


def resolve_state_dir(path: str) -> str:
    """The orbax `state` directory a --checkpoint argument points at."""
    path = os.path.abspath(path)
    if os.path.isdir(os.path.join(path, "checkpoints")):
        path = os.path.join(path, "checkpoints")
    steps = [d for d in os.listdir(path) if d.isdigit()] if os.path.isdir(path) else []
    if steps:
        path = os.path.join(path, max(steps, key=int))
    if os.path.isdir(os.path.join(path, "state")):
        path = os.path.join(path, "state")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    return path


def load_params(state_dir: str):
    """-> (params, router_bias) from a TrainState or a {params, router_bias} tree."""
    import orbax.checkpoint as ocp

    tree = ocp.StandardCheckpointer().restore(state_dir)
    if "params" not in tree:
        raise ValueError(f"{state_dir} holds no 'params' (keys: {sorted(tree)})")
    return tree["params"], tree.get("router_bias") or {}


def _model_config(args, config_dir: str):
    """The model config and tokenizer name: from --config, else from `config_dir`'s
    model_config.json (a converted or quantised checkpoint), with --override applied."""
    from moe_jax.config import apply_override, load_config

    if args.config:
        config = load_config(args.config, args.override)
        return config.model, config.get("data", {}).get("tokenizer", "char")
    converted = os.path.join(config_dir, "model_config.json")
    if not os.path.exists(converted):
        raise ValueError("--config is required unless the checkpoint has a model_config.json")
    import ml_collections

    with open(converted) as f:
        model = ml_collections.ConfigDict(json.load(f))
    config = ml_collections.ConfigDict({"model": model})
    for override in args.override:
        apply_override(config, override)
    return config.model, "char"


def _sample(args) -> int:
    import jax
    import numpy as np

    from moe_jax.data.tokenizer import get_tokenizer
    from moe_jax.infer.generate import generate

    from moe_jax.quant.checkpoint import is_quantized_checkpoint, load_quantized

    try:
        if is_quantized_checkpoint(args.checkpoint):
            params, router_bias, _, _ = load_quantized(args.checkpoint)
            model_config, tokenizer_name = _model_config(args, args.checkpoint)
        else:
            state_dir = resolve_state_dir(args.checkpoint)
            model_config, tokenizer_name = _model_config(args, os.path.dirname(state_dir))
            params, router_bias = load_params(state_dir)
    except (FileNotFoundError, ValueError) as e:
        print(f"moe-jax sample: error: {e}", file=sys.stderr)
        return 2
    tokenizer = get_tokenizer(args.tokenizer or tokenizer_name)
    bos = [] if tokenizer.bos_id is None else [tokenizer.bos_id]
    encoded = [bos + tokenizer.encode(p) for p in args.prompt]
    width = max(len(ids) for ids in encoded)
    prompts = np.full((len(encoded), width), tokenizer.pad_id, np.int32)
    for row, ids in enumerate(encoded):  # left-padded, as the cache expects
        prompts[row, width - len(ids):] = ids
    out = generate(model_config, params, router_bias, prompts, [len(ids) for ids in encoded],
                   max_new_tokens=args.max_new_tokens, rng=jax.random.PRNGKey(args.seed),
                   temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                   stop_tokens=(tokenizer.eos_id,), pad_id=tokenizer.pad_id)
    tokens, lengths = np.asarray(out["tokens"]), np.asarray(out["lengths"])
    logprobs = np.asarray(out["logprobs"])
    for row, prompt in enumerate(args.prompt):
        completion = tokenizer.decode(tokens[row, :lengths[row]].tolist())
        if args.json:
            print(json.dumps({"prompt": prompt, "completion": completion,
                              "tokens": int(lengths[row]),
                              "logprob": float(logprobs[row, :lengths[row]].sum())}))
        else:
            print(prompt + completion)
    return 0


def add_sample_command(subparsers) -> None:
    s = subparsers.add_parser("sample", help="complete prompts with a checkpoint (KV-cached decoding)")
    s.add_argument("--config", help="config file, optionally path.py:variant")
    s.add_argument("--checkpoint", required=True, help="workdir, checkpoints dir, step dir or state dir")
    s.add_argument("--prompt", action="append", required=True, help="prompt text (repeatable: a batch)")
    s.add_argument("--max-new-tokens", type=int, default=64)
    s.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    s.add_argument("--top-k", type=int, default=0, help="0 = no limit")
    s.add_argument("--top-p", type=float, default=1.0)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--tokenizer", help="'char' or a tokenizer.json path (default: the config's)")
    s.add_argument("--override", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a config field, e.g. model.dispatch=reference (repeatable)")
    s.add_argument("--json", action="store_true", help="one JSON object per prompt")
    s.set_defaults(func=_sample)
