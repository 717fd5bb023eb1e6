"""GRPO with verifiable rewards on the synthetic reasoning tasks, from an SFT model.

For each training prompt the policy samples G worked solutions; the task's verifier
scores each (1 if the answer is right, plus rl.format_weight if the response has the
answer format), advantages are normalised within the group, and the clipped
policy-ratio objective with a k3 KL penalty to the SFT model is maximised
(moe_jax/rl/grpo.py). Held-out greedy exact match is measured before the first step
and every `eval.every` steps.

    python -m moe_jax.main --config=experiments/grpo_reasoning.py:tiny --workdir=runs/grpo

With rl.init_from empty the run first trains its `sft` section (the matching variant of
experiments/sft_reasoning.py) into <workdir>/sft. Rerunning the command resumes (SFT or
GRPO, wherever it stopped).

Variants:
  tiny   arithmetic on 2 CPU cores (the SFT model of sft_reasoning.py:tiny)
  arith  2-3 operand arithmetic on 2 CPU cores, from sft_reasoning.py:arith (the main
         job's recipe on a shorter schedule)
  slip   2-3 operand arithmetic on 2 CPU cores, from sft_reasoning.py:slip: an SFT
         model that learnt a flawed teacher's forgotten carries, which the verifier's
         reward can teach away
  hf     one accelerator, starting from an imported Hugging Face DeepSeek checkpoint:
         moe-jax convert --from-hf HF_DIR --to CKPT, then
         --config.rl.init_from=CKPT --config.data.tokenizer=HF_DIR/tokenizer.json
         (the model section is taken from CKPT; the task prompts are plain text).
"""

import ml_collections

from moe_jax.jobs import recipes

VARIANTS = ("tiny", "arith", "slip", "hf")


def get_config(arg=None):
    variant = arg or "tiny"
    if variant not in VARIANTS:
        raise ValueError(f"variant {variant!r}: expected one of {VARIANTS}")
    small = variant != "hf"  # the CPU variants
    c = recipes.sft(variant if small else "small")
    if small:  # trained into <workdir>/sft when rl.init_from is empty
        c.sft = c.copy_and_resolve_references()
    c.job = "grpo"

    c.rl = ml_collections.ConfigDict()
    c.rl.init_from = ""  # an SFT workdir or a model directory; "" = train the `sft` section first
    c.rl.group_size = 8  # G
    c.rl.prompt_len = 16 if small else 128
    c.rl.max_new_tokens = 40 if small else 512
    c.rl.temperature = 1.0  # sample from pi_theta itself, so pi_old is the sampler
    c.rl.eps_low, c.rl.eps_high = 0.2, 0.28  # DAPO's clip-higher
    c.rl.beta = 0.001  # KL weight (DeepSeek-R1-Zero)
    c.rl.aggregation = "sequence"  # GRPO; "token" (DAPO) or "dr_grpo"
    # Sparse-MoE RL (moe_jax/rl/grpo.py, moe_jax/rl/router_health.py):
    c.rl.importance = "token"  # GRPO's per-token ratios; "sequence": GSPO's sequence ratio
    c.rl.gspo_eps_low, c.rl.gspo_eps_high = 3e-4, 4e-4  # GSPO's own clip range (the paper's)
    c.rl.routing_replay = False  # the update runs the experts the rollout used
    c.rl.update_router_bias = False  # keep the balancing biases frozen during RL
    c.rl.speculative = False  # rollouts drafted by the MTP module (needs model.mtp_depth >= 1)
    c.rl.scale_by_std = True  # False: Dr. GRPO's advantages
    c.rl.num_minibatches = 2  # optimizer steps per rollout batch
    c.rl.format_weight = 0.1
    c.rl.reward = "verifier"  # or "grm": the generative reward model of experiments/grm_spct.py
    c.rl.grm_from = ""  # the GRM's workdir when rl.reward = "grm"
    c.rl.grm_samples = 1  # GRM trajectories per input (Voting@k)
    c.rl.grm_temperature = 0.5

    c.train.steps = 1000
    c.train.batch_size = 16 if small else 64  # prompts per step
    c.train.log_every = 1
    c.train.checkpoint_every = 50
    c.optimizer.learning_rate = 5e-5 if small else 1e-6
    c.optimizer.warmup_steps = 10
    c.optimizer.total_steps = -1
    c.optimizer.end_lr_ratio = 1.0  # constant after warmup
    c.optimizer.weight_decay = 0.0
    c.eval.every = 50
    c.eval.num_examples = 500
    c.eval.final_num_examples = 1000
    if variant == "slip":
        c.eval.num_examples = 1000  # every point of the curve on the same problems
    return c


def sweep():
    """Group size x KL weight x clip range; then GRPO vs GSPO, each with and without routing
    replay, over three seeds (experiments/RESULTS.md: "GRPO vs GSPO on a sparse MoE")."""
    grid = [{"config.rl.group_size": g, "config.rl.beta": beta, "config.rl.eps_high": eps}
            for g in (4, 8, 16) for beta in (0.0, 0.001, 0.01) for eps in (0.2, 0.28)]
    moe_rl = [{"config.rl.importance": importance, "config.rl.routing_replay": replay,
               "config.train.seed": seed}
              for importance in ("token", "sequence") for replay in (False, True) for seed in (0, 1, 2)]
    return grid + moe_rl
