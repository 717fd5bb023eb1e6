"""Held-out exact-match accuracy: generate greedily, decode, check with the task verifier."""

from __future__ import annotations

import jax
import numpy as np

from moe_jax.data.pipeline import eval_batches
from moe_jax.data.tasks import get_task
from moe_jax.infer.greedy import greedy_generate
from moe_jax.models.transformer import Transformer
from moe_jax.moe.router import BIAS_COLLECTION


def inference_model(model_config):
    """The same model with a dispatch that never drops a token: a dropped token at
    inference silently changes an answer, and generation batches are small."""
    config = model_config.copy_and_resolve_references()
    from moe_jax.moe.dispatch import ENGINES

    config.dispatch = "dropless" if "dropless" in ENGINES else "reference"
    return Transformer(config)


def exact_match(model_config, params, router_bias, source, tokenizer, *, task: str,
                num_examples: int, batch_size: int, max_new_tokens: int,
                process_index: int = 0, process_count: int = 1, show: int = 0):
    """-> (accuracy in [0, 1], number evaluated, a few (prompt, response, ok) samples)."""
    model = inference_model(model_config)
    variables = {"params": params, BIAS_COLLECTION: router_bias}
    verifier = get_task(task)

    def apply_fn(v, tokens, positions, segment_ids):
        return model.apply(v, tokens, positions, segment_ids)[0]

    correct, total, samples = 0, 0, []
    for batch in eval_batches(source, tokenizer, task=task, batch_size=batch_size,
                              num_examples=num_examples, process_index=process_index,
                              process_count=process_count):
        new_tokens = np.asarray(greedy_generate(
            apply_fn, variables, batch["prompt_tokens"], batch["prompt_lengths"],
            max_new_tokens=max_new_tokens, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id))
        for example, row in zip(batch["examples"], new_tokens):
            response = tokenizer.decode(row.tolist())
            ok = bool(verifier.verify(example, response))
            correct += ok
            total += 1
            if len(samples) < show:
                samples.append((example.prompt, response, ok))
    return correct / max(total, 1), total, samples
