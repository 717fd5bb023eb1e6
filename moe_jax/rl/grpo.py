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

GSPO (Zheng et al. 2025, "Group Sequence Policy Optimization"; `importance="sequence"`)
replaces the token ratios by one ratio per output, the geometric mean of its token
ratios, and clips that:

    s_i    = (pi_theta(o_i | q) / pi_old(o_i | q)) ^ (1 / |o_i|)
           = exp(1/|o_i| sum_t (logp_new_it - logp_old_it))
    L_i    = min(s_i A_i, clip(s_i, 1 - eps_low, 1 + eps_high) A_i)
    J      = 1/G sum_i L_i  -  beta KL   (KL averaged as in "sequence" above)

A sequence ratio sits much closer to 1 than token ratios do, so its clip range is its
own and much narrower (the paper: 3e-4 / 4e-4). On a sparse MoE one re-routed token
moves a token ratio a lot but the geometric mean little, which is GSPO's point there.

Arrays: logprobs and mask are [B, T] with B = number of outputs (groups laid out
contiguously: rows g*G .. g*G+G-1 belong to prompt g); advantages [B]. std is the
population standard deviation of the group (divide by G).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

AGGREGATIONS = ("sequence", "token", "dr_grpo")
IMPORTANCE = ("token", "sequence")  # GRPO's token ratios | GSPO's sequence ratio


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
    """eps_low/eps_high: clip range of token ratios (DAPO's clip-higher uses 0.2/0.28);
    beta: KL weight (DeepSeek-R1-Zero: 0.001; 0 skips the reference model); max_length:
    the constant divisor of "dr_grpo" (the generation budget). importance: "token"
    (GRPO) or "sequence" (GSPO, clipped to [1 - seq_eps_low, 1 + seq_eps_high] and
    averaged over outputs, so its aggregation is "sequence")."""

    eps_low: float = 0.2
    eps_high: float = 0.2
    beta: float = 0.001
    aggregation: str = "sequence"
    max_length: int | None = None
    importance: str = "token"
    seq_eps_low: float = 3e-4
    seq_eps_high: float = 4e-4

    def __post_init__(self):
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation={self.aggregation!r}: expected one of {AGGREGATIONS}")
        if self.aggregation == "dr_grpo" and not self.max_length:
            raise ValueError("aggregation='dr_grpo' needs max_length (the constant divisor)")
        if self.importance not in IMPORTANCE:
            raise ValueError(f"importance={self.importance!r}: expected one of {IMPORTANCE}")
        if self.importance == "sequence" and self.aggregation != "sequence":
            raise ValueError(f"importance='sequence' (GSPO) averages over outputs: aggregation must be "
                             f"'sequence', got {self.aggregation!r}")
        for name in ("eps_low", "seq_eps_low"):  # 1 - eps_low must stay a positive ratio
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: expected 0 <= {name} < 1")
        for name in ("eps_high", "seq_eps_high"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name}={getattr(self, name)}: expected >= 0")


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
    """min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A); ratio [B, T] (or [B] for
    sequence ratios), advantages [B]."""
    a = advantages.reshape(advantages.shape + (1,) * (ratio.ndim - 1))
    return jnp.minimum(ratio * a, jnp.clip(ratio, 1.0 - eps_low, 1.0 + eps_high) * a)


def sequence_ratio(logp_new, logp_old, mask):
    """GSPO's s_i = exp(mean over o_i's tokens of (logp_new - logp_old)): [B, T] -> [B].

    Its gradient is s_i times the mean of the token log-prob gradients: every token of
    an output gets the same weight, however far its own ratio moved."""
    mask = mask.astype(jnp.float32)
    mean_log_ratio = ((logp_new - logp_old) * mask).sum(axis=1) / jnp.maximum(mask.sum(axis=1), 1.0)
    return jnp.exp(mean_log_ratio)


def is_clipped(ratio, advantages, eps_low: float, eps_high: float):
    """The clipped term is the one min() chose and it is flat: rho > 1 + eps_high with
    A > 0, or rho < 1 - eps_low with A < 0. Shapes as `clipped_surrogate`."""
    a = advantages.reshape(advantages.shape + (1,) * (ratio.ndim - 1))
    return ((ratio > 1.0 + eps_high) & (a > 0)) | ((ratio < 1.0 - eps_low) & (a < 0))


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
      clip_fraction  tokens whose clipped term is the one min() chose and is flat (see
                     `is_clipped`); under GSPO, the tokens of clipped outputs
      kl             mean k3 KL to the reference (0 without one)
      entropy        -mean log pi_theta(o_t): a one-sample estimate of the entropy
      ratio          mean rho (GSPO: mean s_i over outputs)
    """
    old_logprobs = jax.lax.stop_gradient(old_logprobs)
    mask = mask.astype(jnp.float32)
    sequence_level = config.importance == "sequence"
    if sequence_level:
        ratio = sequence_ratio(policy_logprobs, old_logprobs, mask)  # s_i, [B]
        eps_low, eps_high = config.seq_eps_low, config.seq_eps_high
        # An output's tokens all share its clipping: [B] -> [B, T] for the token metrics.
        clipped = jnp.broadcast_to(is_clipped(ratio, advantages, eps_low, eps_high)[:, None], mask.shape)
    else:
        ratio = policy_ratio(policy_logprobs, old_logprobs)  # rho_it, [B, T]
        eps_low, eps_high = config.eps_low, config.eps_high
        clipped = is_clipped(ratio, advantages, eps_low, eps_high)
    surrogate = clipped_surrogate(ratio, advantages, eps_low, eps_high)
    if ref_logprobs is not None:
        kl = k3_kl(policy_logprobs, jax.lax.stop_gradient(ref_logprobs))
    else:
        if config.beta:
            raise ValueError("beta > 0 needs ref_logprobs")
        kl = jnp.zeros_like(policy_logprobs)
    if sequence_level:  # 1/G sum_i L_i, and the KL averaged per output ("sequence")
        objective = surrogate.mean()
        if config.beta:
            objective = objective - config.beta * aggregate(kl, mask, "sequence")
    else:
        per_token = surrogate - config.beta * kl if config.beta else surrogate
        objective = aggregate(per_token, mask, config.aggregation, config.max_length)

    token_mean = lambda x: (x * mask).sum() / jnp.maximum(mask.sum(), 1.0)  # noqa: E731
    metrics = {
        "objective": objective,
        "clip_fraction": token_mean(clipped.astype(jnp.float32)),
        "kl": token_mean(kl),
        "entropy": token_mean(-policy_logprobs),
        "ratio": ratio.mean() if sequence_level else token_mean(ratio),
    }
    return -objective, jax.tree.map(jax.lax.stop_gradient, metrics)
