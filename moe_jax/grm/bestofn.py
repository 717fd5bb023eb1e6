"""Best-of-n: does the GRM pick a right answer among the policy's own n samples?

For each held-out problem the policy samples n worked solutions; the GRM rates them
(judge.py, `pairing`) and the highest-rated one is the answer (ties broken at
random). Compared with:

    random   a uniformly random one of the n: the mean fraction of right samples
    greedy   the policy's own greedy answer (temperature 0), for scale
    oracle   any of the n is right (pass@n): what a perfect judge would reach
"""

from __future__ import annotations

import numpy as np

from moe_jax.data.tasks import get_task
from moe_jax.grm.judge import judge_candidates
from moe_jax.grm.sampling import sample_texts


def pick_best(ratings, rng: np.random.Generator) -> np.ndarray:
    """Row-wise argmax of ratings [Q, n], ties broken uniformly at random."""
    ratings = np.asarray(ratings, np.float64)
    noise = rng.random(ratings.shape)
    top = ratings == ratings.max(axis=1, keepdims=True)
    return np.argmax(np.where(top, noise, -1.0), axis=1)


def best_of_n(policy_config, policy_params, policy_router_bias, grm_config, grm_params,
              grm_router_bias, problems, tokenizer, *, n: int, policy_temperature: float,
              policy_prompt_len: int, policy_max_new_tokens: int, grm_k: int,
              grm_temperature: float, grm_prompt_len: int, grm_max_new_tokens: int, rng,
              batch_size: int, pairing: str = "both_orders", view: str = "full",
              task: str = "arithmetic", seed: int = 0) -> dict[str, float]:
    """Held-out accuracy of the GRM's pick among n policy samples, against random and oracle."""
    verifier = get_task(task)
    repeated = [p.prompt for p in problems for _ in range(n)]
    texts = sample_texts(policy_config, policy_params, policy_router_bias, repeated, tokenizer,
                         prompt_len=policy_prompt_len, max_new_tokens=policy_max_new_tokens,
                         temperature=policy_temperature, rng=rng, batch_size=batch_size)
    candidates = [[texts[q * n + i] or "" for i in range(n)] for q in range(len(problems))]
    right = np.array([[bool(verifier.verify(p, c)) for c in row]
                      for p, row in zip(problems, candidates)], np.float64)
    ratings = judge_candidates(grm_config, grm_params, grm_router_bias,
                               [p.prompt for p in problems], candidates, tokenizer,
                               pairing=pairing, view=view, k=grm_k, temperature=grm_temperature,
                               prompt_len=grm_prompt_len, max_new_tokens=grm_max_new_tokens,
                               rng=rng, batch_size=batch_size)
    picks = pick_best(ratings, np.random.default_rng(seed))
    greedy = sample_texts(policy_config, policy_params, policy_router_bias,
                          [p.prompt for p in problems], tokenizer, prompt_len=policy_prompt_len,
                          max_new_tokens=policy_max_new_tokens, temperature=0.0, rng=rng,
                          batch_size=batch_size)
    return {"n": n, "problems": len(problems),
            "random": float(right.mean()),
            "greedy": float(np.mean([bool(verifier.verify(p, t or "")) for p, t in zip(problems, greedy)])),
            "grm": float(right[np.arange(len(problems)), picks].mean()),
            "oracle": float(right.max(axis=1).mean())}
