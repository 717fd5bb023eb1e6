"""How well the sampler's watermark is found, and what it costs, on a finished run.

    result = watermark_study(model, held_out, tokenizer, seq_len, settings)

`model` is a loaded model (model_config, params, router_bias; moe_jax.train.loader),
`held_out` the run's held-out records (moe_jax.data.splits). `settings` is a `watermark`
section (key, gamma, context; moe_jax.infer.watermark) with the study's fields: deltas,
texts, null_texts, length, temperature, fpr, batch_size, heldout_examples. From the
held-out prompts, the model samples `length` new tokens at `temperature`: `null_texts` texts without a watermark and `texts` with each
delta. Every text is scored by the detector
(moe_jax.infer.watermark.detect, each (context, token) pair once) and called
watermarked when z exceeds the threshold of a one-sided p-value `fpr` under the null,
z* = Phi^-1(1 - fpr). Reported per delta:

  detection rate     share of watermarked texts with z > z*
  null false alarms  share of unwatermarked texts with z > z* (what fpr promises)
  held-out ppl       perplexity of the held-out split's solutions under the distribution
                     the sampler draws from (teacher-forced: green logits + delta), against
                     the model's own: the quality cost of the bias itself
  sample ppl         perplexity of the generated texts under the model without the
                     watermark (the model as its own judge, as the paper uses a larger one)

and for the unwatermarked texts the z-scores' mean and spread with repeats ignored and
counted (the null should be N(0, 1): counting repeated pairs inflates the spread).
"""

from __future__ import annotations

import statistics

import jax
import numpy as np

from moe_jax.analysis.scoring import continuation_rows, example_rows, mean_response_nll
from moe_jax.data.pipeline import prompt_ids
from moe_jax.data.tasks.base import field
from moe_jax.infer.generate import generate
from moe_jax.infer.watermark import Watermark, detect


def z_threshold(fpr: float) -> float:
    """z* with P(N(0, 1) > z*) = fpr."""
    return statistics.NormalDist().inv_cdf(1.0 - fpr)


def sample_texts(loaded, prompts, tokenizer, *, count: int, length: int, temperature: float,
                 watermark, batch_size: int, seed: int) -> list[list[int]]:
    """`count` continuations of the prompts (cycled; each pass with its own rng), as new
    token ids up to <eos> (excluded)."""
    width = max(len(p) for p in prompts)
    out = []
    for start in range(0, count, batch_size):
        rows = [prompts[i % len(prompts)] for i in range(start, start + batch_size)]
        tokens = np.full((batch_size, width), tokenizer.pad_id, np.int32)
        for r, ids in enumerate(rows):
            tokens[r, width - len(ids):] = ids
        result = generate(loaded.model_config, loaded.params, loaded.router_bias, tokens,
                          np.array([len(p) for p in rows], np.int32), max_new_tokens=length,
                          rng=jax.random.PRNGKey(seed * 100_003 + start), temperature=temperature,
                          stop_tokens=(tokenizer.eos_id,), pad_id=tokenizer.pad_id,
                          vocab_limit=min(tokenizer.vocab_size, loaded.model_config.vocab_size),
                          watermark=watermark)
        for row, n in zip(np.asarray(result["tokens"]), np.asarray(result["lengths"])):
            ids = row[:n].tolist()
            out.append(ids[:ids.index(tokenizer.eos_id)] if tokenizer.eos_id in ids else ids)
    return out[:count]


def sample_perplexity(loaded, prompts, texts, tokenizer, seq_len: int) -> float:
    """exp(mean NLL per generated token) of non-empty texts under the plain model, each
    after the prompt it continued."""
    pairs = [(prompts[i % len(prompts)], t) for i, t in enumerate(texts) if t]
    rows = continuation_rows([p for p, _ in pairs], [t for _, t in pairs], seq_len, tokenizer.pad_id)
    nll = mean_response_nll(loaded.model_config, loaded.params, loaded.router_bias, rows)
    lengths = np.array([len(t) for _, t in pairs], np.float64)
    return float(np.exp(np.sum(nll * lengths) / lengths.sum()))


def heldout_perplexity(loaded, rows, tokenizer, watermark=None) -> float:
    nll = mean_response_nll(loaded.model_config, loaded.params, loaded.router_bias, rows,
                            watermark=watermark, pad_id=tokenizer.pad_id,
                            vocab_limit=min(tokenizer.vocab_size, loaded.model_config.vocab_size))
    tokens = rows["loss_mask"].sum(1)
    return float(np.exp(np.sum(nll * tokens) / tokens.sum()))


def watermark_study(model, held_out, tokenizer, seq_len: int, settings, log=print) -> dict:
    """The study of the module docstring on `model`, prompted with `held_out` records."""
    w = settings
    deltas, texts, null_texts, length = tuple(w.deltas), w.texts, w.null_texts, w.length
    temperature, fpr, batch_size = w.temperature, w.fpr, w.batch_size
    prompts = [prompt_ids(tokenizer, field(held_out[i], "prompt")) for i in range(len(held_out))]
    heldout_rows = example_rows([held_out[i] for i in range(min(w.heldout_examples, len(held_out)))],
                           tokenizer, seq_len)
    threshold = z_threshold(fpr)
    scorer = Watermark(key=int(w.key), gamma=float(w.gamma), delta=0.0, context=int(w.context))

    null = sample_texts(model, prompts, tokenizer, count=null_texts, length=length,
                        temperature=temperature, watermark=None, batch_size=batch_size, seed=0)
    null_z = np.array([detect(t, scorer).z for t in null])
    null_z_every = np.array([detect(t, scorer, ignore_repeats=False).z for t in null])
    result = {
        "fpr": fpr, "z_threshold": threshold, "length": length, "temperature": temperature,
        "gamma": scorer.gamma, "context": scorer.context,
        "null": {"texts": len(null), "mean_tokens": float(np.mean([len(t) for t in null])),
                 "false_alarms": float(np.mean(null_z > threshold)), "max_z": float(np.nanmax(null_z)),
                 "z_mean": float(np.nanmean(null_z)), "z_std": float(np.nanstd(null_z)),
                 "z_std_counting_repeats": float(np.nanstd(null_z_every)),
                 "heldout_ppl": heldout_perplexity(model, heldout_rows, tokenizer),
                 "sample_ppl": sample_perplexity(model, prompts, null, tokenizer, seq_len)},
        "deltas": [],
    }
    log(f"no watermark: {len(null)} texts, z {result['null']['z_mean']:.2f} +- "
        f"{result['null']['z_std']:.2f}, false alarms {result['null']['false_alarms']:.2%}")
    for i, delta in enumerate(deltas):
        mark = Watermark(key=int(w.key), gamma=float(w.gamma), delta=float(delta), context=int(w.context))
        marked = sample_texts(model, prompts, tokenizer, count=texts, length=length,
                              temperature=temperature, watermark=mark, batch_size=batch_size, seed=i + 1)
        z = np.array([detect(t, scorer).z for t in marked])
        row = {"delta": float(delta), "texts": len(marked),
               "mean_tokens": float(np.mean([len(t) for t in marked])),
               "detection_rate": float(np.mean(z > threshold)), "z_median": float(np.nanmedian(z)),
               "detected_above_max_null": float(np.mean(z > result["null"]["max_z"])),
               "heldout_ppl": heldout_perplexity(model, heldout_rows, tokenizer, watermark=mark),
               "sample_ppl": sample_perplexity(model, prompts, marked, tokenizer, seq_len)}
        result["deltas"].append(row)
        log(f"delta {delta}: detection {row['detection_rate']:.1%} at z > {threshold:.2f}, held-out "
            f"ppl {row['heldout_ppl']:.3f} (plain {result['null']['heldout_ppl']:.3f}), sample ppl "
            f"{row['sample_ppl']:.3f} (plain {result['null']['sample_ppl']:.3f})")
    return result
