"""Training objective: next-token cross-entropy + multi-token prediction + routing losses.

Batch fields (all [B, T]): inputs, targets (next token), loss_mask (1 where the target
counts), segment_ids (packed example id, 0 = padding), positions.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class LossWeights:
    """The weights of the objective's terms (the model config's fields of the same names)."""

    mtp_loss_weight: float = 0.3  # lambda: MTP cross-entropy, averaged over depths
    aux_loss_coef: float = 0.0  # expert-level balance loss (V2)
    seq_aux_loss_coef: float = 1e-4  # sequence-wise balance loss (V3)
    z_loss_coef: float = 0.0  # router z-loss

    @classmethod
    def from_config(cls, m) -> "LossWeights":
        return cls(mtp_loss_weight=m.mtp_loss_weight, aux_loss_coef=m.aux_loss_coef,
                   seq_aux_loss_coef=m.seq_aux_loss_coef, z_loss_coef=m.z_loss_coef)


def masked_cross_entropy(logits, targets, mask):
    """Mean cross-entropy over positions with mask > 0. logits: [B, T, V] float32."""
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]  # [B, T]
    mask = mask.astype(jnp.float32)
    return jnp.sum(nll * mask) / jnp.maximum(mask.sum(), 1.0)


def mtp_targets(batch, depth: int):
    """Targets and mask for MTP depth k (1-based): position i predicts targets[i + k].

    A position counts only when i + k is inside the row, its target counts, and it
    belongs to the same packed example as position i.
    """
    targets, mask, segments = batch["targets"], batch["loss_mask"], batch["segment_ids"]
    pad = ((0, 0), (0, depth))
    shifted_targets = jnp.pad(targets[:, depth:], pad)
    shifted_mask = jnp.pad(mask[:, depth:], pad)
    same_example = jnp.pad(segments[:, depth:], pad) == segments
    return shifted_targets, shifted_mask * same_example


def routing_losses(stats, m: LossWeights):
    """Sum over MoE layers of the configured balance, sequence-balance and z losses."""
    if not stats:
        return jnp.zeros(()), {}
    balance = jnp.sum(stats["balance_loss"])
    seq_balance = jnp.sum(stats["seq_balance_loss"])
    z = jnp.sum(stats["z_loss"])
    total = m.aux_loss_coef * balance + m.seq_aux_loss_coef * seq_balance + m.z_loss_coef * z
    return total, {"balance_loss": balance, "seq_balance_loss": seq_balance, "z_loss": z}


def _concat_stats(extras):
    """Routing statistics of the main MoE layers and the MTP layers, one layer axis."""
    parts = [extras["moe_stats"]] if extras["moe_stats"] else []
    parts += [jax.tree.map(lambda s: s[None], st) for st in extras.get("mtp_stats", []) if st]
    if not parts:
        return {}
    return jax.tree.map(lambda *s: jnp.concatenate(s), *parts)


def model_loss(logits, extras, batch, m: LossWeights):
    """-> (scalar loss, metrics dict of scalars)."""
    ce = masked_cross_entropy(logits, batch["targets"], batch["loss_mask"])
    loss = ce
    metrics = {"ce_loss": ce}
    if "mtp_logits" in extras:
        per_depth = []
        for k in range(1, extras["mtp_logits"].shape[0] + 1):
            targets, mask = mtp_targets(batch, k)
            per_depth.append(masked_cross_entropy(extras["mtp_logits"][k - 1], targets, mask))
        mtp = jnp.mean(jnp.stack(per_depth))  # lambda / D * sum_k L_k
        loss = loss + m.mtp_loss_weight * mtp
        metrics["mtp_loss"] = mtp
    stats = _concat_stats(extras)
    aux, aux_metrics = routing_losses(stats, m)
    loss = loss + aux
    metrics.update(aux_metrics)
    if stats:
        metrics["dropped_fraction"] = jnp.mean(stats["dropped_fraction"])
        load = stats["expert_load"]  # [layers, E], fractions summing to 1 per layer
        metrics["max_load_ratio"] = jnp.mean(load.max(axis=-1) * load.shape[-1])
        # Per-layer arrays (main MoE layers, then MTP layers) for logging, not scalars.
        metrics["routing/expert_load"] = load
        metrics["routing/dropped_fraction"] = stats["dropped_fraction"]
    metrics["loss"] = loss
    return loss, metrics
