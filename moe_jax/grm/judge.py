"""Scoring many candidate answers of one query with a GRM that reads them in pairs.

The pointwise GRM gives each response of its input its own 1..10 score, so a response
can be rated in several inputs and its scores summed, exactly as Voting@k sums over
samples. A tiny GRM trained on pairs is shown pairs:

    round_robin  every unordered pair (i, j), i < j: n (n - 1) / 2 inputs; every
                 candidate meets every other
    both_orders  every ordered pair (i, j), i != j: n (n - 1) inputs; each candidate is
                 R1 as often as R2, so a GRM's position bias (e.g. taking R1's working
                 for its own) cancels instead of favouring the lower-numbered samples
                 (best-of-n selection)
    cyclic       (i, i + 1 mod n): n inputs, two per candidate (cheap enough to be a
                 GRPO reward for groups of n samples)

Each input is sampled k times; a candidate's rating is the mean of the scores it got
in well-formed trajectories (0 when it got none).
"""

from __future__ import annotations

import numpy as np

from moe_jax.grm.format import grm_prompt, shown_response
from moe_jax.grm.sampling import sample_trajectories
from moe_jax.grm.scores import get_parser

PAIRINGS = ("round_robin", "both_orders", "cyclic")


def pairs(n: int, pairing: str) -> list[tuple[int, int]]:
    if pairing == "round_robin":
        return [(i, j) for i in range(n) for j in range(i + 1, n)]
    if pairing == "both_orders":
        return [(i, j) for i in range(n) for j in range(n) if i != j]
    if pairing == "cyclic":
        return [(i, (i + 1) % n) for i in range(n)] if n > 2 else pairs(n, "round_robin")
    raise ValueError(f"pairing={pairing!r}: expected one of {PAIRINGS}")


def _one_line(response) -> str:
    return (response or "").replace("\n", " ")


def judge_candidates(model_config, params, router_bias, queries, candidates, tokenizer, *,
                     pairing: str = "round_robin", k: int = 1, temperature: float = 0.5,
                     prompt_len: int, max_new_tokens: int, rng, batch_size: int,
                     parser: str = "tolerant", view: str = "full"):
    """queries [Q] (task prompts), candidates [Q][n] responses -> ratings float [Q, n].
    view: what the GRM reads of each response (format.RESPONSE_VIEWS, as it was trained)."""
    parse = get_parser(parser)
    inputs, owners = [], []
    for q, (query, answers) in enumerate(zip(queries, candidates)):
        for i, j in pairs(len(answers), pairing):
            shown = [shown_response(_one_line(answers[c]), view) for c in (i, j)]
            inputs.append(grm_prompt(query, shown))
            owners.append((q, i, j))
    # A policy's samples can be longer than the sets the GRM was trained on: widen the
    # prompt (in steps of 16, to keep the number of compiled shapes small) rather than cut them.
    longest = max(len(tokenizer.encode(p)) + 1 for p in inputs)
    prompt_len = max(prompt_len, -(-longest // 16) * 16)
    if prompt_len + max_new_tokens > model_config.max_seq_len:
        raise ValueError(f"GRM inputs of {longest} tokens plus {max_new_tokens} generated exceed "
                         f"model.max_seq_len={model_config.max_seq_len}")
    samples = sample_trajectories(model_config, params, router_bias, inputs, tokenizer, k=k,
                                  prompt_len=prompt_len, max_new_tokens=max_new_tokens,
                                  temperature=temperature, rng=rng, batch_size=batch_size)
    width = max(len(a) for a in candidates)
    total, count = np.zeros((len(queries), width)), np.zeros((len(queries), width))
    for (q, i, j), texts in zip(owners, samples):
        for text in texts:
            parsed = parse(text, 2)
            if parsed.ok:
                total[q, [i, j]] += parsed.scores
                count[q, [i, j]] += 1
    return np.where(count > 0, total / np.maximum(count, 1), 0.0)
