"""A tiny end-to-end distillation: the student's KL to a fixed teacher falls."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from helpers import lm_batch, tiny_model_config
from moe_jax.distill.schedule import temperature_schedule
from moe_jax.train.losses import LossWeights
from moe_jax.distill.step import make_distill_train_step
from moe_jax.models.transformer import Transformer
from moe_jax.moe.router import BIAS_COLLECTION
from moe_jax.train.optimizer import default_optimizer_config, make_optimizer
from moe_jax.train.state import TrainState


def init(model):
    v = nn.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 16), jnp.int32)))
    return v["params"], v.get(BIAS_COLLECTION, {})


def test_distill_steps_lower_the_kl_to_the_teacher():
    small = dict(d_model=64, dense_ffn=128, q_lora_rank=0, kv_lora_rank=32, num_experts=4,
                 top_k=2, n_group=1, topk_group=1, expert_ffn=64, mtp_depth=0)
    teacher = Transformer.from_config(tiny_model_config(num_layers=2, num_dense_layers=1, **small))
    student = Transformer.from_config(tiny_model_config(num_layers=1, num_dense_layers=0,
                                            **dict(small, num_experts=2, top_k=1)))
    t_params, t_bias = init(teacher)
    # A peaked teacher (scaled-up head) makes a target the student has to move towards.
    t_params = dict(t_params, head=t_params["head"] * 20.0)
    s_params, s_bias = init(student)
    c = default_optimizer_config()
    c.learning_rate, c.warmup_steps, c.total_steps = 1e-2, 1, 100
    opt = make_optimizer(c)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=s_params,
                       opt_state=opt.init(s_params), router_bias=s_bias)
    step = jax.jit(make_distill_train_step(student, teacher, opt,
                                           temperature_schedule("constant", 2.0, 2.0, 10), 1.0,
                                           LossWeights(), 1e-3),
                   donate_argnums=0)
    batch = lm_batch(jax.random.randint(jax.random.PRNGKey(3), (4, 17), 0, 99))
    teacher_vars = {"params": t_params, BIAS_COLLECTION: t_bias}
    kls = []
    for i in range(10):
        state, metrics = step(state, teacher_vars, batch, jax.random.PRNGKey(i))
        kls.append(float(metrics["kl"]))
    assert float(metrics["tau"]) == 2.0
    assert kls[-1] < 0.7 * kls[0], kls


def test_alpha_outside_the_unit_interval_is_refused():
    model = Transformer.from_config(tiny_model_config())
    with pytest.raises(ValueError, match="distill.alpha"):
        make_distill_train_step(model, model, None, None, 1.5, LossWeights(), 0.0)
