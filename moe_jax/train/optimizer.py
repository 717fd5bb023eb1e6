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


SCHEDULES = ("cosine", "wsd")


def validate_optimizer_config(c) -> None:
    """The schedule fields, before anything is built (ConfigError names the field)."""
    from moe_jax.models.config import ConfigError

    schedule = c.get("schedule", "cosine")
    if schedule not in SCHEDULES:
        raise ConfigError("optimizer.schedule", schedule, f"one of {', '.join(SCHEDULES)}")
    fraction = c.get("decay_fraction", 0.2)
    if schedule == "wsd" and not (isinstance(fraction, (int, float)) and 0 < fraction <= 1):
        raise ConfigError("optimizer.decay_fraction", fraction, "a fraction in (0, 1]")
    if not c.learning_rate > 0:
        raise ConfigError("optimizer.learning_rate", c.learning_rate, "> 0")


def learning_rate_schedule(c):
    """Linear warmup to `learning_rate` over `warmup_steps`, then down to
    learning_rate x end_lr_ratio at `total_steps`:

        cosine  (default) all the way from the peak
        wsd     warmup-stable-decay: the peak held until the last `decay_fraction` of
                the steps, then a cosine down. A run's progress at the peak rate does not
                depend on its length, and the annealing gain comes in one short tail.

    `schedule` and `decay_fraction` are optional fields (absent: cosine)."""
    end = c.learning_rate * c.end_lr_ratio
    if c.get("schedule", "cosine") == "cosine":
        decay_steps = max(c.total_steps - c.warmup_steps, 1)
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0, peak_value=c.learning_rate, warmup_steps=c.warmup_steps,
            decay_steps=c.warmup_steps + decay_steps, end_value=end)
    decay = max(int(round(c.total_steps * c.get("decay_fraction", 0.2))), 1)
    stable = max(c.total_steps - c.warmup_steps - decay, 0)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, c.learning_rate, max(c.warmup_steps, 1)),
         optax.constant_schedule(c.learning_rate),
         optax.cosine_decay_schedule(c.learning_rate, decay, alpha=c.end_lr_ratio)],
        boundaries=[c.warmup_steps, c.warmup_steps + stable])


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
