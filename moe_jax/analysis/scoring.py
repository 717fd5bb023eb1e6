"""Teacher-forced log-probabilities of a finished model on rows of one example each: what
the analyses score (a membership attack's losses, a watermark's quality cost).

    logprobs = target_logprobs(model_config, params, router_bias, batch)   # [B, T]

`batch` holds the training pipeline's fields for unpacked rows (moe_jax.data.pipeline
`pad_to_row`): inputs, targets, loss_mask, segment_ids, positions, all [B, T]. Entry
[b, t] is log p(targets[b, t] | inputs[b, :t + 1]). With a watermark the distribution is
the one its sampler draws from at temperature 1: green logits + delta, the context being
the h inputs ending at t (pad_id before the row's start, as a left-padded prompt has).
vocab_limit: ids from it up are never drawn (the table padded past the tokenizer).
The model runs with a dispatch that never drops a token, so a row's numbers do not
depend on its batch.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from moe_jax.data.pipeline import pad_to_row, tokenize_example
from moe_jax.infer.generate import inference_config
from moe_jax.models.transformer import Transformer
from moe_jax.moe.router import BIAS_COLLECTION


def watermark_contexts(inputs, h: int, pad_id: int):
    """inputs [B, T] -> [B, T, h]: at t, inputs[t - h + 1 .. t], pad_id before the start."""
    padded = jnp.concatenate([jnp.full((inputs.shape[0], h - 1), pad_id, inputs.dtype), inputs], axis=1)
    return jnp.stack([padded[:, j:j + inputs.shape[1]] for j in range(h)], axis=-1)


@functools.partial(jax.jit, static_argnames=("m", "watermark", "pad_id", "vocab_limit"))
def _target_logprobs(params, router_bias, batch, *, m, watermark, pad_id, vocab_limit):
    model = Transformer.from_config(m)
    logits, _ = model.apply({"params": params, BIAS_COLLECTION: router_bias}, batch["inputs"],
                            batch["positions"], batch["segment_ids"])
    logits = logits.astype(jnp.float32)
    if vocab_limit is not None:
        logits = jnp.where(jnp.arange(logits.shape[-1]) < vocab_limit, logits, -jnp.inf)
    if watermark is not None:
        b, t, v = logits.shape
        contexts = watermark_contexts(batch["inputs"], watermark.context, pad_id).reshape(b * t, -1)
        logits = watermark.bias(logits.reshape(b * t, v), contexts).reshape(b, t, v)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    return jnp.take_along_axis(log_probs, batch["targets"][..., None], axis=-1)[..., 0]


def target_logprobs(model_config, params, router_bias, batch, *, watermark=None, pad_id: int = 0,
                    vocab_limit: int | None = None):
    """-> float32 [B, T] (see the module docstring)."""
    return _target_logprobs(params, router_bias or {}, jax.tree.map(jnp.asarray, batch),
                            m=inference_config(model_config), watermark=watermark, pad_id=int(pad_id),
                            vocab_limit=None if vocab_limit is None else int(vocab_limit))


def example_rows(records, tokenizer, seq_len: int) -> dict:
    """Records with prompt and solution -> one padded row each, fields [N, seq_len]."""
    rows = [pad_to_row(tokenize_example(r, tokenizer, seq_len), seq_len, tokenizer.pad_id) for r in records]
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def continuation_rows(prompts, continuations, seq_len: int, pad_id: int) -> dict:
    """Token ids of prompts and what followed them -> padded rows [N, seq_len] whose
    loss_mask covers the continuation's tokens only."""
    n = len(prompts)
    rows = {"inputs": np.full((n, seq_len), pad_id, np.int32), "targets": np.full((n, seq_len), pad_id, np.int32),
            "loss_mask": np.zeros((n, seq_len), np.float32), "segment_ids": np.zeros((n, seq_len), np.int32),
            "positions": np.zeros((n, seq_len), np.int32)}
    for i, (prompt, more) in enumerate(zip(prompts, continuations)):
        ids = list(prompt) + list(more)
        if len(ids) > seq_len:
            raise ValueError(f"a prompt and continuation of {len(ids)} tokens exceed seq_len {seq_len}")
        k = len(ids)
        rows["inputs"][i, :k] = ids
        rows["targets"][i, :k - 1] = ids[1:]
        rows["loss_mask"][i, len(prompt) - 1:k - 1] = 1.0
        rows["segment_ids"][i, :k] = 1
        rows["positions"][i, :k] = np.arange(k)
    return rows


def mean_response_nll(model_config, params, router_bias, rows: dict, *, batch_size: int = 100,
                      **kwargs) -> np.ndarray:
    """Each row's mean negative log-prob over its loss_mask tokens -> float [N], scored in
    batches of one compiled shape (the last padded with copies of the first row)."""
    n = len(rows["inputs"])
    out = []
    for start in range(0, n, batch_size):
        index = np.arange(start, start + batch_size)
        index = np.where(index < n, index, start)
        batch = {k: v[index] for k, v in rows.items()}
        logprobs = np.asarray(target_logprobs(model_config, params, router_bias, batch, **kwargs))
        mask = batch["loss_mask"]
        out.append(-(logprobs * mask).sum(1) / np.maximum(mask.sum(1), 1.0))
    return np.concatenate(out)[:n]
