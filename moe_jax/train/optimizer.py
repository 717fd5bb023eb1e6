"""AdamW with linear warmup, cosine decay and global-norm clipping (DeepSeek-V3 recipe:
betas (0.9, 0.95), weight decay 0.1, clip 1.0). Norm scales are not decayed."""

from __future__ import annotations

import jax
import ml_collections
import optax


def default_optimizer_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.learning_rate = 3e-3
    c.warmup_steps = 50
    c.total_steps = 1000
    c.end_lr_ratio = 0.1  # final learning rate as a fraction of the peak
    c.b1 = 0.9
    c.b2 = 0.95
    c.weight_decay = 0.1
    c.grad_clip = 1.0
    return c


def learning_rate_schedule(c):
    decay_steps = max(c.total_steps - c.warmup_steps, 1)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=c.learning_rate, warmup_steps=c.warmup_steps,
        decay_steps=c.warmup_steps + decay_steps, end_value=c.learning_rate * c.end_lr_ratio)


def _decay_mask(params):
    """Decay weights, not norm scales (which may be stacked [layers, D] under scan)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], "key", None) != "scale", params)


def make_optimizer(c) -> optax.GradientTransformation:
    return optax.chain(
        optax.clip_by_global_norm(c.grad_clip),
        optax.adamw(learning_rate_schedule(c), b1=c.b1, b2=c.b2, weight_decay=c.weight_decay,
                    mask=_decay_mask),
    )
