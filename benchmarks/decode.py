"""KV-cached decoding: cache size per token (MLA vs multi-head attention) and speed.

Prints ONE JSON line:
  - DeepSeek-V3 (configs/deepseek_v3.py, by arithmetic, nothing allocated): bytes per
    token of the MLA latent cache in bfloat16, (kv_lora_rank + rope) x layers x 2, next
    to a multi-head-attention cache of full keys (qk_nope + rope) and values for every
    head, and their ratio.
  - The tiny model (configs/tiny.py, random weights) on this machine: greedy decoding
    tokens/s with the cache (`infer.generate`) and with full recomputation
    (`infer/greedy.py`), same batch, prompt and length, and their ratio. Timings are
    interleaved (cached, full, cached, full, ...) and each side's median is taken, so
    load from other work on a shared machine hits both alike. Both produce the same
    tokens (checked, reported as same_tokens).

    python benchmarks/decode.py                       # B=8, prompt 16, 112 new tokens
    python benchmarks/decode.py --batch 1 --new-tokens 240

With --speculative it measures instead speculative decoding with the MTP module
(moe_jax/infer/speculative.py) of a trained model (--checkpoint: a run trained with
model.mtp_depth >= 1) on the held-out problems of its task, against plain cached
decoding of the same prompts: greedy tokens identical to plain decoding (counted per
problem), the fraction of drafts accepted (greedy and at temperature 1), and tokens/s
of both, timed interleaved (plain, speculative, plain, ...) per batch of prompts.

    python benchmarks/decode.py --speculative --checkpoint runs/arith_mtp --examples 1000
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from moe_jax.config import load_config
from moe_jax.infer.cache import cache_bytes_per_token, mha_cache_bytes_per_token
from moe_jax.infer.generate import generate, inference_config
from moe_jax.infer.greedy import greedy_generate
from moe_jax.models.transformer import Transformer


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=112)
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--speculative", action="store_true", help="MTP drafts vs plain decoding")
    p.add_argument("--checkpoint", help="--speculative: a run (or model directory) trained with MTP")
    p.add_argument("--config", help="--speculative: the experiment the run ran, if it records none")
    p.add_argument("--examples", type=int, default=1000, help="--speculative: held-out problems")
    p.add_argument("--eval-batch", type=int, default=250, help="--speculative: prompts per generate call")
    args = p.parse_args()
    if args.speculative and not args.checkpoint:
        p.error("--speculative needs --checkpoint: a model trained with model.mtp_depth >= 1 "
                "(random weights would reject nearly every draft)")
    return args


def v3_cache_figures():
    m = load_config("configs/deepseek_v3.py").model
    mla = cache_bytes_per_token(m, "bfloat16")
    mha = mha_cache_bytes_per_token(m, "bfloat16")
    return {"v3_mla_cache_bytes_per_token_bf16": mla, "v3_mha_cache_bytes_per_token_bf16": mha,
            "v3_mha_over_mla": round(mha / mla, 2)}


def _timed(fn):
    start = time.perf_counter()
    out = jax.block_until_ready(fn())
    return time.perf_counter() - start, out


def tiny_decode_figures(args):
    m = inference_config(load_config("configs/tiny.py").model)
    model = Transformer.from_config(m)
    variables = nn.unbox(model.init(jax.random.PRNGKey(args.seed), jnp.zeros((1, 8), jnp.int32)))
    params, bias = variables["params"], variables["router_bias"]
    prompts = jax.random.randint(jax.random.PRNGKey(args.seed + 1), (args.batch, args.prompt_len),
                                 3, m.vocab_size)
    lengths = jnp.full((args.batch,), args.prompt_len, jnp.int32)
    n = args.new_tokens

    def cached():  # no stop tokens: every row runs the full length
        return generate(m, params, bias, prompts, lengths, max_new_tokens=n, pad_id=0)["tokens"]

    def full():
        apply_fn = _full_apply(model)
        return greedy_generate(apply_fn, variables, prompts, lengths, max_new_tokens=n,
                               eos_id=-1, pad_id=0)

    compile_cached, a = _timed(cached)
    compile_full, b = _timed(full)
    times = {"cached": [], "full": []}
    for _ in range(args.rounds):
        times["cached"].append(_timed(cached)[0])
        times["full"].append(_timed(full)[0])
    t_cached, t_full = statistics.median(times["cached"]), statistics.median(times["full"])
    tokens = args.batch * n
    return {
        "tiny_batch": args.batch, "tiny_prompt_len": args.prompt_len, "tiny_new_tokens": n,
        "tiny_cached_tokens_per_s": round(tokens / t_cached, 1),
        "tiny_full_recompute_tokens_per_s": round(tokens / t_full, 1),
        "cached_over_full_speed": round(t_full / t_cached, 2),
        "same_tokens": bool(np.array_equal(np.asarray(a), np.asarray(b))),
        "first_call_s": {"cached": round(compile_cached, 2), "full": round(compile_full, 2)},
    }


_APPLY = {}


def _full_apply(model):
    # One function object per model, so greedy_generate's jit cache (static apply_fn) hits.
    if id(model) not in _APPLY:
        _APPLY[id(model)] = lambda v, t, p, s: model.apply(v, t, p, s)[0]
    return _APPLY[id(model)]


def speculative_figures(args):
    """Plain vs speculative decoding of a trained MTP model on held-out problems."""
    from moe_jax.data.pipeline import eval_batches
    from moe_jax.data.tokenizer import get_tokenizer
    from moe_jax.train.loader import load_model, read_run_config
    from moe_jax.data.splits import load_data

    config = load_config(args.config) if args.config else read_run_config(args.checkpoint)
    if config is None:
        raise SystemExit(f"{args.checkpoint} records no config: pass --config")
    loaded = load_model(args.checkpoint, config.model, log=lambda *_: None)
    m = inference_config(loaded.model_config)
    if m.mtp_depth < 1:
        raise SystemExit(f"{args.checkpoint}: model.mtp_depth = {m.mtp_depth}; train with MTP")
    tokenizer = get_tokenizer(config.data.tokenizer)
    _, test = load_data(config, args.checkpoint)
    batches = list(eval_batches(test, tokenizer, task=config.data.task, batch_size=args.eval_batch,
                                num_examples=args.examples))
    n = config.eval.max_new_tokens

    def run(batch, temperature, speculative):
        return generate(m, loaded.params, loaded.router_bias, batch["prompt_tokens"],
                        batch["prompt_lengths"], max_new_tokens=n, temperature=temperature,
                        rng=jax.random.PRNGKey(args.seed), stop_tokens=(tokenizer.eos_id,),
                        pad_id=tokenizer.pad_id, speculative=speculative)

    figures = {"checkpoint": args.checkpoint, "examples": sum(len(b["examples"]) for b in batches),
               "new_tokens_max": n, "batch": args.eval_batch}
    for temperature, name in ((0.0, "greedy"), (1.0, "t1")):
        tokens, seconds = {False: 0, True: 0}, {False: 0.0, True: 0.0}
        same = proposed = accepted = 0
        for batch in batches:
            # The first call of each compiles (and gives the outputs: the rng is fixed).
            outs = {spec: jax.block_until_ready(run(batch, temperature, spec)) for spec in (False, True)}
            times = {False: [], True: []}
            for _ in range(args.rounds):
                for spec in (False, True):
                    times[spec].append(_timed(lambda: run(batch, temperature, spec))[0])
            for spec in (False, True):
                tokens[spec] += int(np.sum(outs[spec]["lengths"]))
                seconds[spec] += statistics.median(times[spec])
            same += int(np.all(np.asarray(outs[True]["tokens"]) == np.asarray(outs[False]["tokens"]),
                               axis=1).sum())
            proposed += int(np.sum(outs[True]["draft_proposed"]))
            accepted += int(np.sum(outs[True]["draft_accepted"]))
        if temperature == 0.0:
            figures["greedy_identical"] = same
        figures[f"{name}_acceptance"] = round(accepted / max(proposed, 1), 4)
        figures[f"{name}_plain_tokens_per_s"] = round(tokens[False] / seconds[False], 1)
        figures[f"{name}_speculative_tokens_per_s"] = round(tokens[True] / seconds[True], 1)
        figures[f"{name}_speculative_over_plain_speed"] = round(
            (tokens[True] / seconds[True]) / (tokens[False] / seconds[False]), 3)
    return figures


def main():
    args = parse_args()
    if args.speculative:
        figures = {"benchmark": "decode_speculative", "backend": jax.default_backend(),
                   **speculative_figures(args)}
    else:
        figures = {"benchmark": "decode", "backend": jax.default_backend(), **v3_cache_figures(),
                   **tiny_decode_figures(args)}
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
