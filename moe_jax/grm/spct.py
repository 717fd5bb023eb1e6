"""Self-Principled Critique Tuning: the data of rejective fine-tuning and the meta RM,
and rule-based online RL with GRPO.

Phase 1 (after a cold start on the teacher's targets):
  rejective sampling  k trajectories per training input at a temperature; keep those
                      whose scores rank the labelled best response strictly first
                      (voting.rft_select), then fine-tune on the kept ones. Hinted
                      sampling (optional) samples again with the best response named
                      where none was accepted.
  meta RM data        every sampled trajectory, labelled Y when its verdict is right:
                      RFT's own samples, or (meta_sampling) samples of the RFT model at
                      the temperature the meta RM will meet at inference.
Phase 2:
  GRPO where the GRM is the policy, a preference set is the prompt, and a trajectory
  earns voting.rule_reward: +1 if its scores single out the best response, else -1.
"""

from __future__ import annotations

import jax
import numpy as np

from moe_jax.grm.format import META_NO, META_YES, hinted_prompt, meta_prompt
from moe_jax.grm.sampling import sample_trajectories
from moe_jax.grm.scores import get_parser, parse_tolerant
from moe_jax.grm.voting import changes_vote, rft_select, rule_reward, verdict_correct
from moe_jax.models.transformer import Transformer
from moe_jax.rl.grpo import GRPOConfig
from moe_jax.rl.iteration import GRPOIteration, check_rows
from moe_jax.train.optimizer import make_optimizer
from moe_jax.train.placement import Placement, replicate_to_host
from moe_jax.train.state import TrainState, create_train_state
from moe_jax.train.trainer import LoopSettings, Trainer


def with_unique_best(sets):
    """The sets whose labels single out one best response (RFT, RL and evaluation)."""
    return [s for s in sets if s.best is not None]


def rejective_sampling(model_config, params, router_bias, sets, tokenizer, *, k: int,
                       temperature: float, prompt_len: int, max_new_tokens: int, rng,
                       batch_size: int, parser: str = "strict", drop_too_easy: bool = True,
                       hinted: bool = False, meta_decisive: bool = False):
    """-> (rft_records, meta_records, stats) from k sampled trajectories per set.

    RFT keeps only trajectories the `parser` reads (strict by default: the targets
    should teach the exact format); the meta RM learns from all of them, with the
    tolerant parser deciding whether the verdict is right, as inference will.
    hinted: the sets where no sample was accepted are sampled k more times with the best
    response named (format.hinted_prompt), and the accepted ones are kept too, with the
    input as it reads without the hint; the meta RM never sees hinted samples.
    meta_decisive: meta_labelled's decisive_only.
    """
    sets = with_unique_best(sets)

    def sample(prompts, key):
        return sample_trajectories(model_config, params, router_bias, prompts, tokenizer, k=k,
                                   prompt_len=prompt_len, max_new_tokens=max_new_tokens,
                                   temperature=temperature, rng=key, batch_size=batch_size)

    samples = sample([s.prompt for s in sets], rng)
    rft, stats = rft_records(sets, samples, parser=parser, drop_too_easy=drop_too_easy)
    meta = [m for s, texts in zip(sets, samples)
            for m in meta_labelled(s, texts, decisive_only=meta_decisive)]
    if hinted:
        missed = [s for s, n in zip(sets, stats["accepted_per_input"]) if n == 0]
        hinted_samples = sample([hinted_prompt(s.prompt, s.best) for s in missed],
                                jax.random.fold_in(rng, 1)) if missed else []
        extra, hinted_stats = rft_records(missed, hinted_samples, parser=parser,
                                          drop_too_easy=False)
        rft += extra
        stats.update(hinted_inputs=len(missed), hinted_accept_rate=hinted_stats["accept_rate"],
                     hinted_records=len(extra))
    del stats["accepted_per_input"]
    stats.update(rft_records=len(rft), meta_yes_fraction=yes_fraction(meta))
    return rft, meta, stats


def rft_records(sets, samples, *, parser: str = "strict", drop_too_easy: bool = True):
    """RFT's records from sampled trajectories of `sets` (unique best): the accepted ones
    (voting.rft_select), each on the set's unhinted input. -> (records, stats)."""
    parse = get_parser(parser)
    records, accepted_per_input, too_easy = [], [], 0
    for s, texts in zip(sets, samples):
        parsed = [parse(t, s.num_responses) for t in texts]
        accepted = sum(verdict_correct(p, s.best) for p in parsed)
        accepted_per_input.append(accepted)
        too_easy += accepted == len(texts)
        records += [{"prompt": s.prompt, "solution": texts[i], "answer": ""}
                    for i in rft_select(parsed, s.best, drop_too_easy=drop_too_easy)]
    trajectories = sum(len(texts) for texts in samples)
    return records, {"inputs": len(sets), "trajectories": trajectories,
                     "accept_rate": sum(accepted_per_input) / max(trajectories, 1),
                     "too_easy_inputs": too_easy, "accepted_per_input": accepted_per_input}


def meta_labelled(preference_set, trajectories, *, decisive_only: bool = False) -> list[dict]:
    """Meta RM records of one set's trajectories: Y when the tolerant parser (the one
    inference votes with) reads a verdict that singles out the labelled best.

    decisive_only: leave out the trajectories that cannot move a vote (malformed, or all
    scores equal; voting.changes_vote), so the meta RM spends its training on telling a
    right verdict from a wrong one rather than on spotting ties, which the parser sees.
    """
    n = preference_set.num_responses
    out = []
    for t in trajectories:
        parsed = parse_tolerant(t, n)
        if decisive_only and not changes_vote(parsed, n):
            continue
        right = verdict_correct(parsed, preference_set.best)
        out.append({"prompt": meta_prompt(preference_set.prompt, t),
                    "solution": META_YES if right else META_NO, "answer": ""})
    return out


def yes_fraction(meta_records) -> float:
    return float(np.mean([m["solution"] == META_YES for m in meta_records])) if meta_records else 0.0


def meta_sampling(model_config, params, router_bias, sets, tokenizer, *, k: int,
                  temperature: float, prompt_len: int, max_new_tokens: int, rng,
                  batch_size: int, decisive_only: bool = False):
    """-> (meta_records, stats): k trajectories per unique-best set from the model whose
    samples the meta RM will rate, at the temperature it will meet them at. RFT's samples
    come from the cold-start model at the RFT temperature, a different distribution.
    decisive_only: see meta_labelled."""
    sets = with_unique_best(sets)
    samples = sample_trajectories(model_config, params, router_bias, [s.prompt for s in sets],
                                  tokenizer, k=k, prompt_len=prompt_len,
                                  max_new_tokens=max_new_tokens, temperature=temperature,
                                  rng=rng, batch_size=batch_size)
    meta = [m for s, texts in zip(sets, samples)
            for m in meta_labelled(s, texts, decisive_only=decisive_only)]
    return meta, {"meta_inputs": len(sets),
                  "meta_trajectories": sum(len(texts) for texts in samples),
                  "meta_records": len(meta), "meta_yes_fraction": yes_fraction(meta)}


def rule_rewards(examples, responses, *, parser: str = "tolerant"):
    """reward_fn for moe_jax.rl.rollout.sample_groups: examples are PreferenceExamples,
    responses GRM trajectories. -> {"reward" (+-1), "well_formed"} float32 [N]."""
    parse = get_parser(parser)
    parsed = [parse(r, e.num_responses) for e, r in zip(examples, responses)]
    return {"reward": np.array([rule_reward(p, e.best) for p, e in zip(parsed, examples)],
                               np.float32),
            "well_formed": np.array([p.ok for p in parsed], np.float32)}


def grpo_phase(model_config, params, router_bias, sets, tokenizer, *, steps: int,
               batch_size: int, group_size: int, temperature: float, prompt_len: int,
               max_new_tokens: int, optimizer_config, grpo: GRPOConfig, seed: int = 0,
               num_minibatches: int = 1, log=None, placement: Placement | None = None):
    """Rule-based online RL of the GRM: -> (params, per-step mean reward float [steps]).

    Each step takes `batch_size` sets in a shuffled order, samples `group_size`
    trajectories per set, and takes `num_minibatches` GRPO updates (moe_jax.rl.iteration,
    the body the policy's GRPO runs too), on `placement`'s mesh; the reference policy of
    the KL term is the starting (RFT) model.
    """
    sets = with_unique_best(sets)
    if not sets:
        raise ValueError("sets: expected preference sets with a unique best response, got none")
    placement = placement or Placement.one_device()
    check_rows(batch_size * group_size, num_minibatches, placement, "grm.rl_batch_size")
    opt_config = optimizer_config.copy_and_resolve_references()
    if opt_config.total_steps <= 0:
        opt_config.total_steps = steps
    optimizer = make_optimizer(opt_config)
    model = Transformer.from_config(model_config)
    _, shardings = placement.state_shardings(model, lambda rng: create_train_state(model, optimizer, rng, 8))
    policy = placement.put(params, shardings.params)
    state = TrainState(step=placement.put(np.int32(0), shardings.step), params=policy,
                       opt_state=placement.run(jax.jit(optimizer.init, out_shardings=shardings.opt_state),
                                               policy),
                       router_bias=placement.put(router_bias, shardings.router_bias))
    iteration = GRPOIteration(model_config, optimizer, grpo, placement, tokenizer=tokenizer,
                              reward_fn=rule_rewards, group_size=group_size, prompt_len=prompt_len,
                              max_new_tokens=max_new_tokens, temperature=temperature,
                              num_minibatches=num_minibatches, scale_by_std=True,
                              ref_params=placement.put(params, shardings.params) if grpo.beta else None,
                              step_sharding=shardings.step, seed=seed + 1)
    order = np.random.default_rng(seed).permutation(len(sets))
    rewards = []

    def next_batch(step, state):
        picks = [sets[order[(step * batch_size + i) % len(sets)]] for i in range(batch_size)]
        return iteration.rollout(step, state, picks)

    def on_report(done, scalars):
        rewards.append(scalars["reward"])
        if log and (done % max(steps // 5, 1) == 0 or done == steps):
            log(f"  GRPO step {done}/{steps}: reward {np.mean(rewards[-5:]):+.3f}, "
                f"well formed {scalars.get('well_formed', float('nan')):.2f}")

    trainer = Trainer(None, LoopSettings(steps=steps, log_every=steps, progress_bar=False), placement,
                      log=log or (lambda *_: None), name="GRM GRPO ", progress_key="reward")
    state = trainer.run(state, next_batch=next_batch, update=iteration.update, on_report=on_report)
    return replicate_to_host(state.params), np.asarray(rewards, np.float32)
