"""The LoRA step: only adapters move, the base is bit-identical, the optimizer holds
adapter-shaped moments only; the same holds with an NF4 base under full remat."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from helpers import lm_batch
from moe_jax.lora.adapters import default_lora_config, init_adapters, trainable_report
from moe_jax.lora.nf4 import NF4Tensor
from moe_jax.lora.qlora import quantize_base
from moe_jax.lora.step import create_lora_state, make_lora_train_step
from moe_jax.models.transformer import Transformer
from moe_jax.train.optimizer import default_optimizer_config, make_optimizer
from moe_jax.train.losses import LossWeights


def optimizer():
    c = default_optimizer_config()
    c.learning_rate, c.warmup_steps, c.total_steps = 1e-2, 1, 100
    return make_optimizer(c)


def copy_tree(tree):
    return jax.tree.map(lambda x: np.array(x, copy=True), tree)


def run_steps(model, base, router_bias, lora_config, steps, batch):
    opt = optimizer()
    adapters = init_adapters(jax.random.PRNGKey(1), base, lora_config)
    state = create_lora_state(adapters, opt, router_bias)
    step = jax.jit(make_lora_train_step(model, opt, lora_config, LossWeights()), donate_argnums=0)
    losses = []
    for i in range(steps):
        state, metrics = step(state, base, batch, jax.random.PRNGKey(i))
        losses.append(float(metrics["loss"]))
    return adapters, state, losses


def adapter_shapes(adapters):
    return {x.shape for x in jax.tree.leaves(adapters)}


def test_only_adapters_train_and_the_base_is_untouched(tiny):
    m, model, params, bias = tiny
    batch = lm_batch(jax.random.randint(jax.random.PRNGKey(5), (4, 17), 0, m.vocab_size))
    before, bias_before = copy_tree(params), copy_tree(bias)
    c = default_lora_config()
    c.rank = 4
    initial, state, losses = run_steps(model, params, bias, c, 8, batch)
    # Base params and router biases bit-identical after 8 steps.
    for x, y in zip(jax.tree.leaves(before), jax.tree.leaves(params)):
        np.testing.assert_array_equal(x, np.asarray(y))
    for x, y in zip(jax.tree.leaves(bias_before), jax.tree.leaves(state.router_bias)):
        np.testing.assert_array_equal(x, np.asarray(y))
    # The adapters moved (every B was zero) and the loss fell on the repeated batch.
    assert all(np.any(np.asarray(b)) for b in jax.tree.leaves(
        jax.tree.map(lambda pair: pair["b"], state.params, is_leaf=lambda x: "b" in x)))
    assert losses[-1] < losses[0] - 0.1, losses
    # The optimizer state holds adapter-shaped moments and scalars, nothing base-sized.
    opt_shapes = {x.shape for x in jax.tree.leaves(state.opt_state)}
    assert opt_shapes <= adapter_shapes(initial) | {()}
    report = trainable_report(params, state.params, state.opt_state)
    adapter_bytes = report["adapter_bytes"]
    # AdamW: two float32 moments per adapter parameter, plus a few scalar counters.
    assert 2 * adapter_bytes <= report["optimizer_bytes"] <= 2 * adapter_bytes + 64
    assert 0 < report["trainable_fraction"] < 0.5


def test_qlora_trains_bfloat16_adapters_on_an_nf4_base_under_full_remat(tiny):
    m = tiny[0].copy_and_resolve_references()
    m.remat_policy, m.dtype, m.mtp_depth = "full", "bfloat16", 0
    model = Transformer.from_config(m)
    variables = nn.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 16), jnp.int32)))
    params, bias = variables["params"], variables["router_bias"]
    base = quantize_base(params)
    assert isinstance(base["moe_layers"]["moe"]["wi_gate"], NF4Tensor)
    codes_before = copy_tree(base)
    c = default_lora_config()
    c.rank, c.dtype, c.quantize_base = 4, "bfloat16", True
    batch = lm_batch(jax.random.randint(jax.random.PRNGKey(5), (4, 17), 0, m.vocab_size))
    _, state, losses = run_steps(model, base, bias, c, 8, batch)
    assert losses[-1] < losses[0] - 0.1, losses
    assert {x.dtype for x in jax.tree.leaves(state.params)} == {jnp.dtype(jnp.bfloat16)}
    for x, y in zip(jax.tree.leaves(codes_before), jax.tree.leaves(base)):
        np.testing.assert_array_equal(x, np.asarray(y))
