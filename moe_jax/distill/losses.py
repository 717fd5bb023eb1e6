"""Distillation loss (Hinton et al., 2015) on response tokens:

    loss = alpha * tau^2 * KL(softmax(teacher / tau) || softmax(student / tau))
           + (1 - alpha) * CE(student, targets)

KL and CE are means over the positions where `mask` > 0 (the batch's loss_mask: the
response, never the prompt). The tau^2 factor keeps the KL term's gradients the same
size as tau changes: the soft targets' gradient scales as 1 / tau^2.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from moe_jax.train.losses import masked_cross_entropy


def masked_kl(student_logits, teacher_logits, mask, tau=1.0):
    """Mean over masked positions of KL(teacher_tau || student_tau); logits [..., V]."""
    t = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / tau, axis=-1)
    s = jax.nn.log_softmax(student_logits.astype(jnp.float32) / tau, axis=-1)
    kl = jnp.sum(jnp.exp(t) * (t - s), axis=-1)  # [...]
    mask = mask.astype(jnp.float32)
    return jnp.sum(kl * mask) / jnp.maximum(mask.sum(), 1.0)


def distillation_loss(student_logits, teacher_logits, targets, mask, *, tau, alpha):
    """-> (scalar loss, {"kl", "ce_loss", "tau"}); `kl` is at temperature tau, unscaled."""
    kl = masked_kl(student_logits, teacher_logits, mask, tau)
    ce = masked_cross_entropy(student_logits, targets, mask)
    loss = alpha * tau**2 * kl + (1.0 - alpha) * ce
    return loss, {"kl": kl, "ce_loss": ce, "tau": jnp.asarray(tau, jnp.float32)}
