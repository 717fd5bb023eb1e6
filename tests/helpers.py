"""Small builders shared by tests."""

import jax.numpy as jnp
import numpy as np

from moe_jax.config import load_config


def tiny_model_config(**overrides):
    config = load_config("configs/tiny.py")
    m = config.model
    for key, value in overrides.items():
        m[key] = value
    return m


def lm_batch(tokens):
    """Next-token batch from int tokens [B, T+1], every target counted."""
    tokens = np.asarray(tokens, np.int32)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    b, t = inputs.shape
    return {"inputs": jnp.asarray(inputs), "targets": jnp.asarray(targets),
            "loss_mask": jnp.ones((b, t), jnp.float32), "segment_ids": jnp.ones((b, t), jnp.int32),
            "positions": jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))}


def random_experts(keys, num_experts, d_model, ffn, scale=0.3):
    """ExpertWeights with N(0, scale^2) entries from three keys (gate, up, down)."""
    import jax

    from moe_jax.moe.dispatch import ExpertWeights

    return ExpertWeights(jax.random.normal(keys[0], (num_experts, d_model, ffn)) * scale,
                         jax.random.normal(keys[1], (num_experts, d_model, ffn)) * scale,
                         jax.random.normal(keys[2], (num_experts, ffn, d_model)) * scale)
