"""Reinforcement learning for reasoning: GRPO and relatives (grpo.py), rule-based
verifiable rewards (rewards.py). Rollouts come from `moe_jax.infer.generate`, whose
per-token log-probs are the pi_old of the clipped objective."""
