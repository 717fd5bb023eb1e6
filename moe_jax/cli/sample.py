"""`moe-jax sample`: complete prompts with a trained or imported model.

    moe-jax sample --checkpoint WORKDIR --prompt "12+34=" [--prompt ...]
        [--temperature 0.7 --top-k 0 --top-p 0.95] [--max-new-tokens 64] [--seed 0]
        [--config experiments/pretrain_arith.py:tiny] [--config.model.dispatch=reference]
        [--tokenizer char] [--json] [--speculative]
        [--watermark-key K --watermark-delta 2 ...]

--checkpoint is anything the one loader reads (moe_jax.train.loader): a training
workdir (its newest sealed checkpoint; also its `checkpoints/` dir, one `<step>` dir
or that step's `state` dir), a model directory (`moe-jax convert`) or a quantised
export (`moe-jax quantize`, dequantised on load). --config is needed only for a
workdir that records no config. The prompt is encoded as training does (<bos> + text);
generation stops at <eos>. --speculative drafts each next token with the model's MTP
module and verifies it in the same forward (a model trained with model.mtp_depth >= 1):
the same greedy output, samples from the same distribution, fewer forward passes.
--watermark-key draws with the green-list watermark that `moe-jax watermark detect
--key K` finds.
"""

from __future__ import annotations

import json

from moe_jax.cli.arguments import add_config_arguments, add_watermark_arguments, error, watermark_from_args


def load_for_sampling(args):
    """-> (model config, params, router_bias, tokenizer name) for --checkpoint, with the
    --config and its overrides applied."""
    import ml_collections

    from moe_jax.config import apply_override, load_config
    from moe_jax.train.loader import load_model

    config = load_config(args.config, args.override) if args.config else None
    loaded = load_model(args.checkpoint, config.model if config else None, log=lambda *_: None)
    # A model directory brings its own model config: the user's model.* overrides (e.g.
    # model.dispatch=reference) apply to it as they would to a --config.
    wrapped = ml_collections.ConfigDict({"model": loaded.model_config})
    for override in args.override:
        if override.startswith("model."):
            apply_override(wrapped, override)
    model_config = wrapped.model
    tokenizer = config.get("data", {}).get("tokenizer") if config is not None else None
    return model_config, loaded.params, loaded.router_bias, tokenizer or loaded.tokenizer


def _sample(args) -> int:
    import jax
    import numpy as np

    from moe_jax.data.tokenizer import get_tokenizer
    from moe_jax.infer.generate import generate
    from moe_jax.train.checkpoint import CorruptCheckpointError

    try:
        watermark = watermark_from_args(args)
        model_config, params, router_bias, tokenizer_name = load_for_sampling(args)
    except (FileNotFoundError, ValueError, CorruptCheckpointError) as e:
        return error("sample", e)
    if args.speculative and model_config.mtp_depth < 1:
        return error("sample", f"--speculative drafts with the MTP module, and this model has "
                               f"model.mtp_depth={model_config.mtp_depth} (expected >= 1)")
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
                   stop_tokens=(tokenizer.eos_id,), pad_id=tokenizer.pad_id,
                   vocab_limit=min(tokenizer.vocab_size, model_config.vocab_size),
                   speculative=args.speculative, watermark=watermark)
    tokens, lengths = np.asarray(out["tokens"]), np.asarray(out["lengths"])
    logprobs = np.asarray(out["logprobs"])
    for row, prompt in enumerate(args.prompt):
        completion = tokenizer.decode(tokens[row, :lengths[row]].tolist())
        if args.json:
            record = {"prompt": prompt, "completion": completion, "tokens": int(lengths[row]),
                      "logprob": float(logprobs[row, :lengths[row]].sum())}
            if args.speculative:
                record["drafts_accepted"] = int(out["draft_accepted"][row])
                record["drafts_proposed"] = int(out["draft_proposed"][row])
            print(json.dumps(record))
        else:
            print(prompt + completion)
    return 0


def add_sample_command(subparsers) -> None:
    s = subparsers.add_parser("sample", help="complete prompts with a checkpoint (KV-cached decoding)")
    add_config_arguments(s, required=False)
    s.add_argument("--checkpoint", required=True,
                   help="training workdir (or a checkpoints/step/state dir in it), model directory "
                        "or quantised export")
    s.add_argument("--prompt", action="append", required=True, help="prompt text (repeatable: a batch)")
    s.add_argument("--max-new-tokens", type=int, default=64)
    s.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    s.add_argument("--top-k", type=int, default=0, help="0 = no limit")
    s.add_argument("--top-p", type=float, default=1.0)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--tokenizer", help="'char' or a tokenizer.json path (default: the run's)")
    s.add_argument("--json", action="store_true", help="one JSON object per prompt")
    s.add_argument("--speculative", action="store_true",
                   help="draft with the model's MTP module, verify with the model (same output distribution)")
    add_watermark_arguments(s)
    s.set_defaults(func=_sample)
