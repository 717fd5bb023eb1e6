"""Differentially private pretraining on arithmetic: what epsilon costs in accuracy, and
what it buys against a membership-inference attack.

The main job's model (moe_jax.jobs.recipes.arithmetic, `tiny`) is trained with DP-SGD
(moe_jax.train.dp_step: per-example gradients clipped to norm 1, Gaussian noise, optax's
aggregation) at a target epsilon, delta = 1e-5, the noise multiplier derived by the RDP
accountant for the run's steps; `inf` is the same recipe without DP. Every variant has
the same budget: the same examples, batch, steps, learning rate and schedule.

The recipe is the main job shortened, and its training set small on purpose: 2-operand
problems of up to 2 digits, 1,000 training problems seen ~19 times each (600 steps of
32), so a non-private model memorises and a loss-threshold attack can tell its training
problems from held-out ones. DP-SGD needs one example per row (data.packing = "pad") and
a frozen router bias (model.bias_update_rate = 0: the bias rule reads expert loads,
which DP-SGD would publish without noise; the sequence-wise balance loss stays, per
example); every variant uses both, so the bias rule is not what separates them.

    python -m moe_jax.main --config=experiments/dp_arith.py:eps8 --workdir=runs/dp_eps8

`run` trains through the pretrain job (the trainer core; dp/epsilon is logged with the
metrics), then attacks the model: the AUC of -loss on 500 training vs 500 held-out
problems (moe_jax.analysis.membership). Results: experiments/RESULTS.md.

Variants: eps1, eps8, inf (no DP), clip (clipping alone, no noise: epsilon infinite),
runlocal (seconds: a smoke run of the plumbing).
"""

from moe_jax.analysis.membership import membership_attack
from moe_jax.data.splits import load_data
from moe_jax.data.tokenizer import get_tokenizer
from moe_jax.jobs import Summary, get_job, recipes
from moe_jax.train.loader import load_model
from moe_jax.train.privacy import dp_config

VARIANTS = ("eps1", "eps8", "inf", "clip", "runlocal")
TARGETS = {"eps1": 1.0, "eps8": 8.0}


def get_config(arg=None):
    variant = arg or "eps8"
    if variant not in VARIANTS:
        raise ValueError(f"variant {variant!r}: expected one of {VARIANTS}")
    c = recipes.arithmetic("tiny")
    recipes.earlier_tiny(c)  # the model and schedule the recorded figures were measured with
    c.data.difficulty.update(max_operands=2, max_digits=2)
    c.data.num_train, c.data.num_test = 1_000, 1_000
    c.data.packing = "pad"  # one example per row: the unit DP-SGD clips and protects
    c.data.seq_len = 32  # <bos> 12+34= +210+430=+640>64 <eos> is at most 26 tokens
    c.model.bias_update_rate = 0.0
    c.train.steps, c.train.batch_size = 600, 32
    c.train.checkpoint_every, c.train.log_every = 300, 25
    c.optimizer.warmup_steps = 30
    c.eval.every = 0
    c.eval.max_new_tokens = 24
    c.eval.final_num_examples = 1_000
    c.dp = dp_config()
    c.dp.enabled = variant != "inf"
    c.dp.delta = 1e-5
    if variant in TARGETS:
        c.dp.target_epsilon = TARGETS[variant]
    else:
        c.dp.noise_multiplier = 0.0  # clip: clipped per-example gradients, no noise
    c.eval.membership_examples = 500
    if variant == "runlocal":
        recipes.smoke_model(c)
        c.data.num_train, c.data.num_test = 64, 32
        recipes.smoke_training(c)
        c.eval.final_num_examples, c.eval.batch_size, c.eval.max_new_tokens = 8, 8, 4
        c.dp.target_epsilon, c.dp.noise_multiplier = -1.0, 1.0
        c.eval.membership_examples = 16
        c.mesh.fsdp = 1
    return c


def run(config, workdir, log=print):
    """The pretrain job, then the membership attack on what it trained."""
    trained = get_job("pretrain").run(config, workdir, experiment=None, log=log)
    model = load_model(workdir, config.model, log=log)
    train, held_out = load_data(config, workdir)
    attack = membership_attack(model, train, held_out, get_tokenizer(config.data.tokenizer),
                               config.data.seq_len, num_examples=config.eval.membership_examples)
    epsilon = trained.details.get("dp", {}).get("epsilon", float("inf"))
    log(f"epsilon {epsilon:.3g}: held-out exact match {trained.value:.1%}, membership AUC "
        f"{attack['auc']:.3f} (loss {attack['member_loss']:.3f} on training problems, "
        f"{attack['nonmember_loss']:.3f} held out)")
    return Summary(job="dp_arith", metric="held-out exact match", value=trained.value,
                   steps=trained.steps, seconds=trained.seconds, examples=trained.examples,
                   unit=trained.unit, details=dict(trained.details, epsilon=epsilon, membership=attack))


def sweep():
    """Target epsilon (delta 1e-5) at the same budget."""
    return [{"config.dp.target_epsilon": eps} for eps in (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)]
