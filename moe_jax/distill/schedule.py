"""Temperature schedules: tau(step), from `start` at step 0 to `end` at `steps`, held
at `end` afterwards. A hot start transfers the teacher's ranking of wrong answers; a
temperature of 1 at the end matches the student to the distribution it is sampled at."""

from __future__ import annotations

import math

import jax.numpy as jnp

from moe_jax.models.config import ConfigError

SCHEDULES = ("constant", "linear", "cosine")


def temperature_schedule(kind: str, start: float, end: float, steps: int):
    """-> tau(step) (jnp float32). kind: constant (always start), linear or cosine."""
    if kind not in SCHEDULES:
        raise ConfigError("distill.schedule", kind, f"one of {list(SCHEDULES)}")
    for name, value in (("distill.tau_start", start), ("distill.tau_end", end)):
        if not isinstance(value, (int, float)) or value <= 0:
            raise ConfigError(name, value, "a temperature > 0")
    if not isinstance(steps, int) or steps <= 0:
        raise ConfigError("distill.tau_steps", steps, "a positive integer")

    def tau(step):
        if kind == "constant":
            return jnp.asarray(start, jnp.float32)
        frac = jnp.clip(jnp.asarray(step, jnp.float32) / steps, 0.0, 1.0)
        if kind == "linear":
            return start + (end - start) * frac
        return end + (start - end) * 0.5 * (1.0 + jnp.cos(math.pi * frac))

    return tau
