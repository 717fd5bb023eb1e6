"""GRPO (DeepSeekMath) and its relatives, as small pure functions in the paper's symbols.

For a prompt q, G outputs o_1..o_G are sampled from the old policy pi_old and scored
r_1..r_G. Each output's tokens share one advantage

    A_i = (r_i - mean(r)) / (std(r) + eps)            (Dr. GRPO: A_i = r_i - mean(r))

and the objective, maximised, is built per token t of output i from

    rho_it = pi_theta(o_it | q, o_i<t) / pi_old(o_it | ...) = exp(logp_new - logp_old)
    L_it   = min(rho_it A_i, clip(rho_it, 1 - eps_low, 1 + eps_high) A_i) - beta KL_it
    KL_it  = pi_ref/pi_theta - log(pi_ref/pi_theta) - 1      (k3: unbiased, always >= 0)

averaged in one of three ways (`aggregation`):

    "sequence"  GRPO:     1/G sum_i 1/|o_i| sum_t L_it
    "token"     DAPO:     sum_i sum_t L_it / sum_i |o_i|      (long outputs weigh more)
    "dr_grpo"   Dr. GRPO: sum_i sum_t L_it / (G * max_length) (no length normalisation)

Arrays: logprobs and mask are [B, T] with B = number of outputs (groups laid out
contiguously: rows g*G .. g*G+G-1 belong to prompt g); advantages [B]. std is the
population standard deviation of the group (divide by G).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

AGGREGATIONS = ("sequence", "token", "dr_grpo")


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
    """eps_low/eps_high: clip range (DAPO's clip-higher uses 0.2/0.28); beta: KL weight
    (DeepSeek-R1-Zero: 0.001; 0 skips the reference model); max_length: the constant
    divisor of "dr_grpo" (the generation budget)."""

    eps_low: float = 0.2
    eps_high: float = 0.2
    beta: float = 0.001
    aggregation: str = "sequence"
    max_length: int | None = None

    def __post_init__(self):
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation={self.aggregation!r}: expected one of {AGGREGATIONS}")
        if self.aggregation == "dr_grpo" and not self.max_length:
            raise ValueError("aggregation='dr_grpo' needs max_length (the constant divisor)")


def group_advantages(rewards, group_size: int, *, scale_by_std: bool = True, eps: float = 1e-6):
    """rewards [B] (B = groups x group_size, groups contiguous) -> A [B].

    scale_by_std=False is Dr. GRPO's unbiased variant (no division by std(r)).
    """
    r = jnp.asarray(rewards, jnp.float32).reshape(-1, group_size)  # [groups, G]
    centred = r - r.mean(axis=1, keepdims=True)
    if scale_by_std:
        scale = r.std(axis=1, keepdims=True) + eps
        centred = centred / jnp.where(scale > 0, scale, 1.0)  # all-equal group: A = 0
    return centred.reshape(-1)


def group_is_informative(rewards, group_size: int):
    """bool [groups]: not all G rewards equal (DAPO's dynamic sampling keeps these only;
    an all-equal group has A = 0 everywhere and contributes no policy gradient)."""
    r = jnp.asarray(rewards).reshape(-1, group_size)
    return jnp.any(r != r[:, :1], axis=1)


def policy_ratio(logp_new, logp_old):
    """rho = pi_theta / pi_old per token, from log-probs."""
    return jnp.exp(logp_new - logp_old)


def clipped_surrogate(ratio, advantages, eps_low: float, eps_high: float):
    """min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A); ratio [B, T], advantages [B]."""
    a = advantages[:, None]
    return jnp.minimum(ratio * a, jnp.clip(ratio, 1.0 - eps_low, 1.0 + eps_high) * a)


def k3_kl(logp_new, logp_ref):
    """Per-token KL(pi_theta || pi_ref) estimate pi_ref/pi - log(pi_ref/pi) - 1 >= 0."""
    log_ratio = logp_ref - logp_new
    return jnp.exp(log_ratio) - log_ratio - 1.0


def aggregate(per_token, mask, aggregation: str, max_length: int | None = None):
    """Average a per-token quantity [B, T] over the mask's tokens as `aggregation` says."""
    mask = mask.astype(jnp.float32)
    total = per_token * mask
    if aggregation == "token":
        return total.sum() / jnp.maximum(mask.sum(), 1.0)
    if aggregation == "sequence":
        per_output = total.sum(axis=1) / jnp.maximum(mask.sum(axis=1), 1.0)
        return per_output.mean()
    if aggregation == "dr_grpo":
        return total.sum() / (per_token.shape[0] * max_length)
    raise ValueError(f"aggregation={aggregation!r}: expected one of {AGGREGATIONS}")


def grpo_loss(policy_logprobs, old_logprobs, ref_logprobs, advantages, mask,
              config: GRPOConfig = GRPOConfig()):
    """-> (loss = -objective, metrics). All log-probs are of the sampled tokens, [B, T].

    old_logprobs and ref_logprobs are constants (gradients are stopped); ref_logprobs may
    be None when config.beta == 0. Metrics (token-averaged over the mask):
      clip_fraction  tokens whose clipped term is the one min() chose and is flat, i.e.
                     rho > 1 + eps_high with A > 0 or rho < 1 - eps_low with A < 0
      kl             mean k3 KL to the reference (0 without one)
      entropy        -mean log pi_theta(o_t): a one-sample estimate of the entropy
      ratio          mean rho
    """
    old_logprobs = jax.lax.stop_gradient(old_logprobs)
    mask = mask.astype(jnp.float32)
    ratio = policy_ratio(policy_logprobs, old_logprobs)
    per_token = clipped_surrogate(ratio, advantages, config.eps_low, config.eps_high)
    if ref_logprobs is not None:
        kl = k3_kl(policy_logprobs, jax.lax.stop_gradient(ref_logprobs))
    else:
        if config.beta:
            raise ValueError("beta > 0 needs ref_logprobs")
        kl = jnp.zeros_like(policy_logprobs)
    if config.beta:
        per_token = per_token - config.beta * kl
    objective = aggregate(per_token, mask, config.aggregation, config.max_length)

    a = advantages[:, None]
    clipped = ((ratio > 1.0 + config.eps_high) & (a > 0)) | ((ratio < 1.0 - config.eps_low) & (a < 0))
    token_mean = lambda x: (x * mask).sum() / jnp.maximum(mask.sum(), 1.0)  # noqa: E731
    metrics = {
        "objective": objective,
        "clip_fraction": token_mean(clipped.astype(jnp.float32)),
        "kl": token_mean(kl),
        "entropy": token_mean(-policy_logprobs),
        "ratio": token_mean(ratio),
    }
    return -objective, jax.tree.map(jax.lax.stop_gradient, metrics)
