"""The whole SPCT experiment, phase by phase (experiments/grm_spct.py configures it).

    data       preference sets from the arithmetic task's train and test splits, plus
               (grm.policy_train_sets) sets of a small policy's own samples
    cold start SFT on the rule-based teacher's principles / critique / scores, from a fresh
               init, an imported checkpoint (grm.init_from) or the policy
               (grm.init_from_policy)
    RFT        k samples per training set, keep the accepted ones, fine-tune on them;
               with grm.rft_hinted, sample again with the best response named where none
               was accepted (the cold start shows a grm.hint_fraction of its inputs hinted)
    meta RM    the RFT model fine-tuned to say Y/N: is this trajectory's verdict right? on
               RFT's samples, or (grm.meta_sets) on the RFT model's own at the evaluation
               temperature
    RL         GRPO on the rule-based reward (+1 / -1), from the RFT model
    evaluate   held-out best-response accuracy: greedy, Voting@k, MetaRM@k, after RFT
               and after RFT + RL; best-of-n over a policy's own samples

Every phase saves its model under <workdir>/models/<phase> (the `moe-jax convert`
layout, so `rl.grm_from` and the one loader read it) and is skipped when that
directory exists: rerunning the command continues after the last finished phase.
The `grm_spct` job (moe_jax.jobs.grm_spct) runs it for `python -m moe_jax.main`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time

import jax
import ml_collections
import numpy as np

from moe_jax.data.pipeline import prompt_ids
from moe_jax.data.tasks import generate_split, get_task
from moe_jax.data.tokenizer import get_tokenizer
from moe_jax.grm import phases
from moe_jax.grm.bestofn import best_of_n
from moe_jax.grm.diagnose import samples_path
from moe_jax.grm.evaluate import evaluate_grm
from moe_jax.grm.finetune import finetune, init_params
from moe_jax.grm.format import META_SUFFIX, RESPONSE_VIEWS, hinted_prompt, shown_response
from moe_jax.grm.judge import PAIRINGS
from moe_jax.grm.preferences import cold_start_records, preference_set, sampled_sets
from moe_jax.grm.reward import GRM_SPEC_FILE
from moe_jax.grm.sampling import sample_texts
from moe_jax.grm.spct import grpo_phase, meta_sampling, rejective_sampling, with_unique_best
from moe_jax.grm.teacher import CRITIQUES
from moe_jax.interop.checkpoint import MODEL_CONFIG_FILE, save_converted
from moe_jax.models.config import ConfigError
from moe_jax.rl.grpo import GRPOConfig
from moe_jax.train.loader import load_model
from moe_jax.train.placement import Placement

RESULTS_FILE = "results.json"


def validate_grm_config(config):
    """Fail before any compute on a bad `grm` section."""
    if "grm" not in config:
        raise ConfigError("grm", None, "a `grm` section (see experiments/grm_spct.py)")
    g = config.grm
    for name in ("num_responses", "train_sets", "test_sets", "prompt_len", "max_new_tokens",
                 "cold_start_steps", "rft_sets", "rft_samples", "rft_steps", "meta_steps",
                 "rl_steps", "rl_batch_size", "rl_group_size", "generate_batch_size",
                 "policy_steps", "best_of_n", "best_of_n_problems", "policy_train_sets",
                 "meta_sets", "meta_samples"):
        if not isinstance(g[name], int) or g[name] < (
                0 if name.startswith("policy") or name.endswith("steps") or name == "meta_sets"
                else 1):
            raise ConfigError(f"grm.{name}", g[name], "a positive integer (steps, policy "
                              "counts and meta_sets may be 0)")
    if g.rl_group_size < 2:
        raise ConfigError("grm.rl_group_size", g.rl_group_size, "at least 2 (GRPO compares a group)")
    if g.prompt_len + g.max_new_tokens > config.model.max_seq_len:
        raise ConfigError("grm.max_new_tokens", g.max_new_tokens,
                          f"at most model.max_seq_len - grm.prompt_len = "
                          f"{config.model.max_seq_len - g.prompt_len}")
    ks = list(g.eval_ks)
    if any(max(ks) % k for k in ks):
        raise ConfigError("grm.eval_ks", ks, "values that each divide the largest (e.g. 1,2,4,8,16)")
    if g.init_from_policy and (g.init_from or not g.policy_steps):
        raise ConfigError("grm.init_from_policy", g.init_from_policy,
                          "False when grm.init_from is set or grm.policy_steps is 0")
    if g.policy_train_sets and not g.policy_steps:
        raise ConfigError("grm.policy_train_sets", g.policy_train_sets,
                          "0 when grm.policy_steps is 0 (there is no policy to sample)")
    if not 0.0 <= g.no_best_fraction < 1.0:
        raise ConfigError("grm.no_best_fraction", g.no_best_fraction, "a value in [0, 1)")
    if not 0.0 <= g.hint_fraction < 1.0:
        raise ConfigError("grm.hint_fraction", g.hint_fraction, "a value in [0, 1)")
    if g.rft_hinted and not g.hint_fraction:
        raise ConfigError("grm.rft_hinted", g.rft_hinted, "False when grm.hint_fraction is 0 "
                          "(the cold start must show the GRM what a hint means)")
    if not 0.0 <= g.no_best_all_wrong <= 1.0:
        raise ConfigError("grm.no_best_all_wrong", g.no_best_all_wrong, "a value in [0, 1]")
    if g.best_of_n_pairing not in PAIRINGS:
        raise ConfigError("grm.best_of_n_pairing", g.best_of_n_pairing, f"one of {PAIRINGS}")
    if g.critique not in CRITIQUES:
        raise ConfigError("grm.critique", g.critique, f"one of {CRITIQUES}")
    if g.response_view not in RESPONSE_VIEWS:
        raise ConfigError("grm.response_view", g.response_view, f"one of {RESPONSE_VIEWS}")
    if g.response_view != "full" and g.critique != "solve":
        raise ConfigError("grm.response_view", g.response_view,
                          f"'full' with grm.critique={g.critique!r} (it grades the working)")
    if config.data.task != "arithmetic":
        raise ConfigError("data.task", config.data.task, "'arithmetic' (the teacher grades its chains)")


def _shown(sets, view):
    """The sets as the GRM reads them (grm.response_view); labels stay the verifier's."""
    return [dataclasses.replace(s, responses=tuple(shown_response(r, view) for r in s.responses))
            for s in sets]


def _save(directory, params, router_bias, model_config, spec):
    save_converted(directory, params, router_bias, model_config, overwrite=True)
    with open(os.path.join(directory, GRM_SPEC_FILE), "w") as f:
        json.dump(spec, f, indent=2)


def _load(directory):
    loaded = load_model(directory)
    return loaded.params, loaded.router_bias


def _phase(workdir, name, log, build, config):
    """Load phase `name`'s saved model, or build() -> (params, router_bias, info) it and
    save it with the settings it was built with (moe_jax.grm.phases)."""
    directory = os.path.join(workdir, "models", name)
    info_path = os.path.join(directory, "info.json")
    if os.path.exists(os.path.join(directory, MODEL_CONFIG_FILE)):
        log(f"[{name}] loaded from {directory}")
        info = json.load(open(info_path)) if os.path.exists(info_path) else {}
        return (*_load(directory), info)
    start = time.time()
    log(f"[{name}] ...")
    params, router_bias, info, spec, model_config = build()
    info = dict(info, seconds=round(time.time() - start, 1))
    _save(directory, params, router_bias, model_config, spec)
    phases.record(directory, config, name)
    with open(info_path, "w") as f:
        json.dump(info, f, indent=2)
    log(f"[{name}] done in {info['seconds']:.0f}s: "
        + ", ".join(f"{k}={v}" for k, v in info.items() if k != "seconds"))
    return params, router_bias, info


def _starting_point(config, log):
    """(model_config, params, router_bias): grm.init_from (a `moe-jax convert` directory,
    which brings its own model config, or a training workdir of config.model's shapes)
    or a fresh init of config.model."""
    g = config.grm
    if g.init_from:
        loaded = load_model(g.init_from, config.model, log=log)
        return loaded.model_config, loaded.params, loaded.router_bias
    params, router_bias = init_params(config.model, config.train.seed, g.seq_len)
    return config.model, params, router_bias


def _sft(model_config, params, router_bias, records, tokenizer, config, steps, seed, log,
         seq_len=None, learning_rate=None, placement=None):
    g = config.grm
    opt = config.optimizer
    if learning_rate:
        opt = opt.copy_and_resolve_references()
        opt.learning_rate = learning_rate
    params, router_bias, losses = finetune(
        model_config, params, router_bias, records, tokenizer, steps=steps,
        batch_size=config.train.batch_size, seq_len=seq_len or g.seq_len,
        optimizer_config=opt, seed=seed, log=log, placement=placement)
    return params, router_bias, {"records": len(records), "steps": steps,
                                 "final_loss": round(float(np.mean(losses[-10:])), 4)}


def train_and_evaluate_grm(config, workdir: str, log=print) -> dict:
    """Run every phase not yet saved in `workdir` and evaluate, on the mesh of
    config.mesh (its sampling sharded too); -> the summary (also in summary.json)."""
    validate_grm_config(config)
    phases.check_saved_phases(config, workdir)  # before anything runs or is written
    os.makedirs(workdir, exist_ok=True)
    placement = Placement.from_config(config)
    placement.check_model(config.model)
    log(placement.describe())
    with placement.generation():
        return _train_and_evaluate_grm(config, workdir, placement, log)


def _train_and_evaluate_grm(config, workdir: str, placement, log) -> dict:
    g, t = config.grm, config.train
    tokenizer = get_tokenizer(config.data.tokenizer)
    difficulty = dict(config.data.difficulty)
    start_time = time.time()

    test_sets = _shown(preference_set("test", g.test_sets, num_responses=g.num_responses,
                                      seed=config.data.seed, difficulty=difficulty),
                       g.response_view)
    model_config, params0, bias0 = _starting_point(config, log)

    @functools.cache
    def policy():
        return _policy(config, workdir, tokenizer, model_config, difficulty, log, placement)

    @functools.cache
    def train_sets():
        """Built only when a phase still to run needs them (the policy's samples cost)."""
        sets = preference_set("train", g.train_sets, num_responses=g.num_responses,
                              seed=config.data.seed, no_best_fraction=g.no_best_fraction,
                              all_wrong_share=g.no_best_all_wrong,
                              difficulty=difficulty)
        if g.policy_train_sets:
            own = _policy_sets(config, tokenizer, *policy(), difficulty)
            log(f"  {len(own)} training sets from the policy's own samples "
                f"({sum(s.best is None for s in own)} all wrong)")
            sets = sets + own
            sets = [sets[i] for i in np.random.default_rng(config.data.seed).permutation(len(sets))]
        return _shown(sets, g.response_view)

    spec = {"max_new_tokens": g.max_new_tokens, "prompt_len": g.prompt_len,
            "num_responses": g.num_responses, "response_view": g.response_view}
    gen = dict(prompt_len=g.prompt_len, max_new_tokens=g.max_new_tokens,
               batch_size=g.generate_batch_size)
    meta_prompt_len = g.prompt_len + g.max_new_tokens + len(META_SUFFIX) + 1
    base_rng = jax.random.PRNGKey(t.seed + 17)

    def cold_start():
        # A GRM starts from a language model that can already solve the task (DeepSeek-GRM
        # starts from a pretrained LLM); grm.init_from_policy uses the small policy.
        records = cold_start_records(train_sets(), g.critique, hint_fraction=g.hint_fraction,
                                     seed=config.data.seed)
        longest = max(len(tokenizer.encode(r["solution"])) + 1 for r in records)  # + <eos>
        if longest > g.max_new_tokens:  # sampled trajectories would be cut before the scores
            raise ConfigError("grm.max_new_tokens", g.max_new_tokens,
                              f"at least {longest}, the longest {g.critique!r} teacher "
                              f"trajectory with <eos>")
        if g.rft_hinted:  # RFT samples hinted inputs: they must fit grm.prompt_len
            hinted = max(len(prompt_ids(tokenizer, hinted_prompt(s.prompt, s.best)))
                         for s in with_unique_best(train_sets()))
            if hinted > g.prompt_len:
                raise ConfigError("grm.prompt_len", g.prompt_len,
                                  f"at least {hinted}, the longest hinted input (grm.rft_hinted)")
        start = (params0, bias0)
        if g.init_from_policy:
            policy_config, *start = policy()
            as_saved = json.loads(json.dumps(model_config.to_dict()))  # tuples become lists
            if policy_config.to_dict() != as_saved:
                raise ConfigError("grm.init_from_policy", True, "a saved policy with the GRM's "
                                  "model config (models/policy holds another architecture)")
        p, b, info = _sft(model_config, *start, records, tokenizer, config,
                          g.cold_start_steps, t.seed, log, placement=placement)
        return p, b, info, spec, model_config

    cold_params, cold_bias, _ = _phase(workdir, "cold_start", log, cold_start, config)

    meta_records = []

    def rft():
        rft_sets = with_unique_best(train_sets())[:g.rft_sets]
        rft_records, meta, stats = rejective_sampling(
            model_config, cold_params, cold_bias, rft_sets, tokenizer, k=g.rft_samples,
            temperature=g.rft_temperature, rng=jax.random.fold_in(base_rng, 1),
            drop_too_easy=g.rft_drop_too_easy, hinted=g.rft_hinted,
            meta_decisive=g.meta_decisive, **gen)
        meta_records.extend(meta)
        with open(os.path.join(workdir, "meta_records.json"), "w") as f:
            json.dump(meta, f)
        log(f"  rejective sampling: {stats}")
        # Fine-tune on the model's own accepted critiques; only when nothing was accepted
        # (a tiny smoke run) fall back to the teacher's targets.
        records = rft_records or cold_start_records(rft_sets, g.critique)
        p, b, info = _sft(model_config, cold_params, cold_bias, records, tokenizer, config,
                          g.rft_steps, t.seed + 1, log, placement=placement)
        return p, b, dict(info, **stats), spec, model_config

    rft_params, rft_bias, rft_info = _phase(workdir, "rft", log, rft, config)

    def meta_rm():
        stats = {}
        if g.meta_sets:
            # The sets after RFT's (wrapping round when there are too few): trajectories
            # of the RFT model at the evaluation temperature, what the meta RM will rate.
            pool = with_unique_best(train_sets())
            sets = [pool[(g.rft_sets + i) % len(pool)] for i in range(g.meta_sets)]
            records, stats = meta_sampling(
                model_config, rft_params, rft_bias, sets, tokenizer, k=g.meta_samples,
                temperature=g.eval_temperature, rng=jax.random.fold_in(base_rng, 3),
                decisive_only=g.meta_decisive, **gen)
            log(f"  meta RM sampling: {stats}")
        else:
            records = meta_records or json.load(open(os.path.join(workdir, "meta_records.json")))
        if g.meta_decisive and not records:
            raise ValueError("grm.meta_decisive: no sampled trajectory could move a vote (all "
                             "malformed or tied), so the meta RM has nothing to learn from; "
                             "set it False or train the GRM further")
        p, b, info = _sft(model_config, rft_params, rft_bias, records, tokenizer, config,
                          g.meta_steps, t.seed + 2, log, seq_len=meta_prompt_len + 2,
                          placement=placement)
        return p, b, dict(info, **stats), spec, model_config

    meta_params, meta_bias, _ = _phase(workdir, "meta_rm", log, meta_rm, config)

    def rl():
        grpo = GRPOConfig(eps_low=g.rl_eps, eps_high=g.rl_eps, beta=g.rl_beta,
                          aggregation="sequence")
        opt = config.optimizer.copy_and_resolve_references()
        opt.learning_rate, opt.warmup_steps, opt.end_lr_ratio = g.rl_learning_rate, 0, 1.0
        p, rewards = grpo_phase(model_config, rft_params, rft_bias, train_sets(), tokenizer,
                                steps=g.rl_steps, batch_size=g.rl_batch_size,
                                group_size=g.rl_group_size, temperature=g.rl_temperature,
                                prompt_len=g.prompt_len, max_new_tokens=g.max_new_tokens,
                                optimizer_config=opt, grpo=grpo, seed=t.seed + 3, log=log,
                                placement=placement)
        info = {"steps": g.rl_steps, "first_reward": float(rewards[:5].mean()),
                "last_reward": float(rewards[-5:].mean())} if len(rewards) else {"steps": 0}
        return p, rft_bias, info, spec, model_config

    rl_params, rl_bias, rl_info = _phase(workdir, "rl", log, rl, config)

    results = _read_results(workdir)
    eval_args = dict(ks=tuple(g.eval_ks), temperature=g.eval_temperature,
                     meta_prompt_len=meta_prompt_len, rng=jax.random.fold_in(base_rng, 2),
                     drop_uniform=g.meta_drop_uniform, **gen)
    for stage, (p, b) in (("rft", (rft_params, rft_bias)), ("rft_rl", (rl_params, rl_bias))):
        if stage not in results:
            log(f"[evaluate {stage}] {g.test_sets} held-out sets, k up to {max(g.eval_ks)}")
            results[stage] = evaluate_grm(model_config, p, b, meta_params, meta_bias, test_sets,
                                          tokenizer, samples_path=samples_path(workdir, stage),
                                          **eval_args)
            _write_results(workdir, results)
        log(f"  {stage}: " + ", ".join(f"{k}={v:.3f}" for k, v in results[stage].items()))

    if g.policy_steps and "best_of_n" not in results:
        results["best_of_n"] = _best_of_n(config, tokenizer, *policy(), model_config, rl_params,
                                          rl_bias, difficulty, log)
        _write_results(workdir, results)

    headline_k = 8 if 8 in g.eval_ks else max(g.eval_ks)
    headline = results["rft_rl"][f"metarm@{headline_k}"]
    summary = {"step": g.cold_start_steps + g.rft_steps + g.rl_steps, "exact_match": headline,
               "eval_examples": results["rft_rl"]["examples"],
               "task": f"arithmetic preference-set (MetaRM@{headline_k} best-response accuracy)",
               "headline_k": headline_k,
               "train_seconds": round(time.time() - start_time, 1),
               "rft": rft_info, "rl": rl_info, "results": results}
    with open(os.path.join(workdir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    if g.figure:
        from moe_jax.grm.figure import plot_best_of_n, plot_scaling
        plot_scaling(results, os.path.join(workdir, "grm_scaling.png"))
        if "best_of_n" in results:
            plot_best_of_n(results["best_of_n"], os.path.join(workdir, "best_of_n.png"))
    return summary


def _policy(config, workdir, tokenizer, model_config, difficulty, log, placement):
    """(model_config, params, router_bias) of a small arithmetic policy, SFT stopped early
    so that it is often wrong: trained once into <workdir>/models/policy."""
    g, t = config.grm, config.train

    def build():
        problems = generate_split(get_task("arithmetic"), "train", g.policy_train_problems,
                                  seed=config.data.seed, **difficulty)
        records = [{"prompt": e.prompt, "solution": e.solution, "answer": e.answer} for e in problems]
        # grm.policy_model: a policy of another architecture than the GRM's.
        policy_config = g.policy_model if "policy_model" in g else model_config
        p0, b0 = init_params(policy_config, t.seed + 5, g.policy_seq_len)
        p, b, info = _sft(policy_config, p0, b0, records, tokenizer, config, g.policy_steps,
                          t.seed + 5, log, seq_len=g.policy_seq_len,
                          learning_rate=g.get("policy_learning_rate"), placement=placement)
        return p, b, info, {}, policy_config

    params, router_bias, _ = _phase(workdir, "policy", log, build, config)
    # The saved policy's own architecture: a run may reuse a policy of another size.
    with open(os.path.join(workdir, "models", "policy", MODEL_CONFIG_FILE)) as f:
        policy_config = ml_collections.ConfigDict(json.load(f))
    return policy_config, params, router_bias


def _policy_sets(config, tokenizer, policy_config, policy_params, policy_bias, difficulty):
    """Training preference sets from the policy's samples (grm.best_of_n per problem, the
    best-of-n temperature) on grm.policy_train_sets train problems."""
    g, t = config.grm, config.train
    problems = generate_split(get_task("arithmetic"), "train", g.policy_train_sets,
                              seed=config.data.seed + 2, **difficulty)
    texts = sample_texts(policy_config, policy_params, policy_bias,
                         [p.prompt for p in problems for _ in range(g.best_of_n)], tokenizer,
                         prompt_len=g.policy_prompt_len, max_new_tokens=g.policy_max_new_tokens,
                         temperature=g.policy_temperature, rng=jax.random.PRNGKey(t.seed + 29),
                         batch_size=g.generate_batch_size)
    samples = [texts[i * g.best_of_n:(i + 1) * g.best_of_n] for i in range(len(problems))]
    return sampled_sets(problems, samples, np.random.default_rng([config.data.seed, 29]),
                        num_responses=g.num_responses, no_best_fraction=g.no_best_fraction)


def _best_of_n(config, tokenizer, policy_config, policy_params, policy_bias, grm_config,
               grm_params, grm_bias, difficulty, log):
    """Select among the policy's n samples per held-out problem with the final GRM."""
    g, t = config.grm, config.train
    task = get_task("arithmetic")
    problems = generate_split(task, "test", g.best_of_n_problems, seed=config.data.seed + 1,
                              **difficulty)
    log(f"[best-of-{g.best_of_n}] {len(problems)} held-out problems")
    out = best_of_n(policy_config, policy_params, policy_bias, grm_config, grm_params, grm_bias,
                    problems, tokenizer, n=g.best_of_n, policy_temperature=g.policy_temperature,
                    policy_prompt_len=g.policy_prompt_len, policy_max_new_tokens=g.policy_max_new_tokens,
                    grm_k=g.best_of_n_grm_samples, grm_temperature=g.eval_temperature,
                    grm_prompt_len=g.prompt_len, grm_max_new_tokens=g.max_new_tokens,
                    rng=jax.random.PRNGKey(t.seed + 23), batch_size=g.generate_batch_size,
                    pairing=g.best_of_n_pairing, view=g.response_view, seed=t.seed)
    log(f"  best-of-{g.best_of_n}: {out}")
    return out


def _read_results(workdir):
    path = os.path.join(workdir, RESULTS_FILE)
    return json.load(open(path)) if os.path.exists(path) else {}


def _write_results(workdir, results):
    with open(os.path.join(workdir, RESULTS_FILE), "w") as f:
        json.dump(results, f, indent=2)


def format_table(results: dict, ks) -> str:
    """The results as the markdown table recorded in experiments/RESULTS.md."""
    stages = [s for s in ("rft", "rft_rl") if s in results]
    names = {"rft": "after RFT", "rft_rl": "after RFT + RL"}
    lines = ["| method | " + " | ".join(names[s] for s in stages) + " |",
             "| --- |" + " --- |" * len(stages)]
    rows = ["verifier", "random", "greedy"] + [f"voting@{k}" for k in ks] + [f"metarm@{k}" for k in ks]
    for row in rows:
        lines.append(f"| {row} | " + " | ".join(f"{results[s][row]:.1%}" for s in stages) + " |")
    if "best_of_n" in results:
        b = results["best_of_n"]
        lines.append("")
        greedy = f", policy greedy {b['greedy']:.1%}" if "greedy" in b else ""
        lines.append(f"best-of-{b['n']} on {b['problems']} held-out problems: GRM pick "
                     f"{b['grm']:.1%}, random pick {b['random']:.1%}{greedy}, oracle "
                     f"(pass@{b['n']}) {b['oracle']:.1%}")
    return "\n".join(lines)
