"""Held-out exact-match accuracy: generate greedily, decode, check with the task verifier."""

from __future__ import annotations

import functools

import jax
import numpy as np

from moe_jax.data.pipeline import eval_batches
from moe_jax.data.tasks import get_task
from moe_jax.infer.generate import generate


def decode_response(tokenizer, ids):
    """Text of the generated ids, or None when the model emitted an id the tokenizer does
    not have (the embedding table is padded past the vocabulary): a wrong answer, not a crash."""
    if tokenizer.eos_id in ids:
        ids = ids[: ids.index(tokenizer.eos_id)]
    if any(i >= tokenizer.vocab_size for i in ids):
        return None
    return tokenizer.decode(ids)


def exact_match(model_config, params, router_bias, source, tokenizer, *, task: str,
                num_examples: int, batch_size: int, max_new_tokens: int, show: int = 0,
                placement=None):
    """-> (accuracy in [0, 1], number evaluated, a few (prompt, response, ok) samples).

    Greedy decoding with the MLA latent cache; the generator switches the model to a
    dispatch that never drops a token (a dropped token would silently change an answer).
    placement (a moe_jax.train.placement.Placement, which the training loops pass in):
    sample on its mesh, the rows split over the batch axes, with the params where they
    are; every process evaluates every problem.
    """
    verifier = get_task(task)
    sample = generate if placement is None else functools.partial(placement.generate, generate)

    correct, total, samples = 0, 0, []
    for batch in eval_batches(source, tokenizer, task=task, batch_size=batch_size,
                              num_examples=num_examples):
        new_tokens = np.asarray(sample(
            model_config, params, router_bias, batch["prompt_tokens"], batch["prompt_lengths"],
            max_new_tokens=max_new_tokens, rng=jax.random.PRNGKey(0), temperature=0.0,
            stop_tokens=(tokenizer.eos_id,), pad_id=tokenizer.pad_id)["tokens"])
        for example, row in zip(batch["examples"], new_tokens):
            response = decode_response(tokenizer, row.tolist())
            ok = response is not None and bool(verifier.verify(example, response))
            correct += ok
            total += 1
            if len(samples) < show:
                samples.append((example.prompt, response or "<ids outside the vocabulary>", ok))
    return correct / max(total, 1), total, samples
