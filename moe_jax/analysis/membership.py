"""A loss-threshold membership-inference attack (Yeom et al. 2018) on a finished run.

The attacker holds the model and a set of candidate examples, half from the training
set and half from the held-out split, and guesses "member" when an example's loss is
low: a model that memorised its training set gives its own examples lower loss. The
attack's strength is the AUC of -loss as a member score (0.5: no better than a coin;
1.0: the model gives away its training set), the figure differential privacy should
push towards 0.5 as epsilon falls.

    model = load_model(workdir, config.model)        # moe_jax.train.loader
    train, held_out = load_data(config, workdir)     # moe_jax.data.splits
    attack = membership_attack(model, train, held_out, tokenizer, seq_len, num_examples=500)
    attack["auc"], attack["member_loss"], attack["nonmember_loss"]

An example's loss is its mean response-token cross-entropy, as training scored it (the
prompt is context, the worked solution and <eos> the targets), teacher-forced, with a
dispatch that never drops a token so an example's loss does not depend on its batch.
"""

from __future__ import annotations

import numpy as np

from moe_jax.analysis.scoring import example_rows, mean_response_nll


def auc(member_scores, nonmember_scores) -> float:
    """P(a member scores higher than a non-member), ties counted half (Mann-Whitney U)."""
    members = np.asarray(member_scores, np.float64)
    others = np.sort(np.asarray(nonmember_scores, np.float64))
    below = np.searchsorted(others, members, side="left")
    ties = np.searchsorted(others, members, side="right") - below
    return float(np.sum(below + 0.5 * ties) / (len(members) * len(others)))


def best_advantage(member_scores, nonmember_scores) -> float:
    """max over thresholds of TPR - FPR (Yeom et al.'s membership advantage)."""
    scores = np.concatenate([member_scores, nonmember_scores])
    is_member = np.concatenate([np.ones(len(member_scores)), np.zeros(len(nonmember_scores))])
    order = np.argsort(-scores, kind="stable")
    tpr = np.cumsum(is_member[order]) / len(member_scores)
    fpr = np.cumsum(1 - is_member[order]) / len(nonmember_scores)
    # A threshold takes a group of tied scores whole: only the ends of tied groups count
    # (splitting a tie by the sort order would claim an advantage no threshold has).
    ends = np.append(np.diff(scores[order]) != 0, True)
    return float(max(0.0, np.max((tpr - fpr)[ends])))


def sample_indices(size: int, n: int, seed: int) -> list[int]:
    """n distinct record indices of a split of `size`, drawn uniformly. Never the first n:
    a split's order is not random (the halves of the arithmetic test split are told apart
    at AUC 0.64 by any trained model), and a biased pick would read as membership."""
    return sorted(np.random.default_rng(seed).choice(size, n, replace=False).tolist())


def membership_attack(model, members, nonmembers, tokenizer, seq_len: int, num_examples: int = 500,
                      seed: int = 0) -> dict:
    """The attack on `model` (a loaded model: model_config, params, router_bias) with
    `num_examples` records drawn uniformly (by `seed`) from `members` (its training split)
    as members and as many from `nonmembers` (held out) as non-members, each tokenized
    into a row of `seq_len`."""
    n = min(num_examples, len(members), len(nonmembers))
    inside, outside = (mean_response_nll(model.model_config, model.params, model.router_bias,
                                         example_rows([split[i] for i in sample_indices(len(split), n, seed + k)],
                                                      tokenizer, seq_len))
                       for k, split in enumerate((members, nonmembers)))
    return {"auc": auc(-inside, -outside), "advantage": best_advantage(-inside, -outside),
            "member_loss": float(inside.mean()), "nonmember_loss": float(outside.mean()), "examples": n}
