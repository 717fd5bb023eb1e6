"""Best-response accuracy of a GRM on a held-out preference set, and how it scales.

For every held-out set (one truly best response among n) the GRM writes one greedy
trajectory and K sampled ones (temperature ~0.5); the meta RM rates every sampled one.
A method is right on a set when its verdict (voting.py) is the labelled best response:

    verifier     the task's verifier picks the correct response: 1.0 by construction
    random       a uniformly random pick: 1 / n in expectation (reported exactly)
    greedy       the greedy trajectory's verdict
    voting@k     voting.voting_best over k samples
    metarm@k     voting.metarm_best over k samples, k_meta = k / 2

For k < K the K samples are split into K / k disjoint groups and the accuracy averaged
over the groups: every group is an independent draw of k samples, so the average has
less noise than using the first k alone.
"""

from __future__ import annotations

import json

import numpy as np

from moe_jax.grm.format import meta_prompt
from moe_jax.grm.sampling import meta_scores, sample_texts, sample_trajectories
from moe_jax.grm.scores import get_parser
from moe_jax.grm.voting import metarm_best, predicted_best, voting_best


def scaling_accuracy(parsed, ratings, best, num_responses, ks, *,
                     drop_uniform: bool = False) -> dict[str, float]:
    """Voting@k and MetaRM@k accuracy from already parsed samples.

    parsed: [N][K] ParsedScores; ratings: [N][K] meta RM ratings; best: [N] labels;
    num_responses: [N]; ks: the k to report, each dividing K; drop_uniform: see
    voting.metarm_best.
    """
    num_samples = len(parsed[0]) if parsed else 0
    out = {}
    for k in ks:
        if k < 1 or num_samples % k:
            raise ValueError(f"k={k}: expected a divisor of the {num_samples} samples per input")
        voting, metarm = [], []
        for trajectories, rated, label, n in zip(parsed, ratings, best, num_responses):
            for g in range(0, num_samples, k):
                group, group_ratings = trajectories[g:g + k], rated[g:g + k]
                voting.append(voting_best(group, n) == label)
                metarm.append(metarm_best(group, group_ratings, n, drop_uniform=drop_uniform)
                              == label)
        out[f"voting@{k}"] = float(np.mean(voting))
        out[f"metarm@{k}"] = float(np.mean(metarm))
    return out


def evaluate_grm(model_config, params, router_bias, meta_params, meta_router_bias, sets,
                 tokenizer, *, ks=(1, 2, 4, 8, 16), temperature: float = 0.5, prompt_len: int,
                 meta_prompt_len: int, max_new_tokens: int, rng, batch_size: int,
                 parser: str = "tolerant", samples_path: str | None = None,
                 drop_uniform: bool = False) -> dict[str, float]:
    """The accuracy table above for one GRM (and meta RM) on `sets` (unique-best only).

    samples_path: also write every set's prompt, label, sampled trajectories and their
    meta RM ratings there (JSON), for moe_jax.grm.diagnose.
    """
    sets = [s for s in sets if s.best is not None]
    if not sets:
        raise ValueError("sets: expected held-out preference sets with a unique best, got none")
    parse = get_parser(parser)
    prompts = [s.prompt for s in sets]
    greedy = sample_texts(model_config, params, router_bias, prompts, tokenizer,
                          prompt_len=prompt_len, max_new_tokens=max_new_tokens, temperature=0.0,
                          rng=rng, batch_size=batch_size)
    greedy_parsed = [parse(t or "", s.num_responses) for t, s in zip(greedy, sets)]
    samples = sample_trajectories(model_config, params, router_bias, prompts, tokenizer,
                                  k=max(ks), prompt_len=prompt_len, max_new_tokens=max_new_tokens,
                                  temperature=temperature, rng=rng, batch_size=batch_size)
    parsed = [[parse(t, s.num_responses) for t in texts] for texts, s in zip(samples, sets)]
    flat = [meta_prompt(s.prompt, t) for s, texts in zip(sets, samples) for t in texts]
    ratings = meta_scores(model_config, meta_params, meta_router_bias, flat, tokenizer,
                          prompt_len=meta_prompt_len, batch_size=batch_size)
    ratings = ratings.reshape(len(sets), max(ks))
    if samples_path:
        with open(samples_path, "w") as f:
            json.dump({"prompts": prompts, "best": [s.best for s in sets],
                       "num_responses": [s.num_responses for s in sets], "samples": samples,
                       "ratings": ratings.tolist()}, f)
    table = {"verifier": 1.0,
             "random": float(np.mean([1.0 / s.num_responses for s in sets])),
             "greedy": float(np.mean([predicted_best(p.scores) == s.best if p.ok else False
                                      for p, s in zip(greedy_parsed, sets)])),
             "greedy_well_formed": float(np.mean([p.ok for p in greedy_parsed])),
             "sample_well_formed": float(np.mean([p.ok for row in parsed for p in row])),
             "examples": len(sets)}
    table.update(scaling_accuracy(parsed, ratings, [s.best for s in sets],
                                  [s.num_responses for s in sets], ks,
                                  drop_uniform=drop_uniform))
    return table
