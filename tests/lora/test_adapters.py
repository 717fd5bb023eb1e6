"""Adapters as a separate tree: selection, zero-B init, merge, trainable counts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from moe_jax.lora.adapters import (LoraKernel, attach, default_lora_config, init_adapters, merge,
                                   trainable_report, validate_lora_config)
from moe_jax.lora.qlora import quantize_base
from moe_jax.lora.targets import select_kernels
from moe_jax.models.config import ConfigError
from moe_jax.moe.router import BIAS_COLLECTION


_JITTED = {}


def forward(model, params, router_bias, tokens):
    """(logits, MTP logits); one jit per model, so tests share a compile per params
    structure (plain, LoRA, NF4)."""
    if id(model) not in _JITTED:
        def apply(params, router_bias, tokens):
            logits, extras = model.apply({"params": params, BIAS_COLLECTION: router_bias}, tokens)
            return logits, extras["mtp_logits"]
        _JITTED[id(model)] = jax.jit(apply)
    return _JITTED[id(model)](params, router_bias, tokens)


def randomised(adapters, seed=3, scale=0.05):
    """Non-zero B (and A) so the adapters change the model."""
    leaves, treedef = jax.tree.flatten(adapters)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    return treedef.unflatten([jax.random.normal(k, x.shape) * scale for k, x in zip(keys, leaves)])


def test_default_targets_cover_attention_mlp_and_experts(tiny):
    m, _, params, _ = tiny
    names = {"/".join(p) for p in select_kernels(params, default_lora_config().targets)}
    assert names == {
        "dense_layers/attn/q_a", "dense_layers/attn/q_b", "dense_layers/attn/kv_a",
        "dense_layers/attn/kv_b", "dense_layers/attn/o", "dense_layers/mlp/gate",
        "dense_layers/mlp/up", "dense_layers/mlp/down",
        "moe_layers/attn/q_a", "moe_layers/attn/q_b", "moe_layers/attn/kv_a",
        "moe_layers/attn/kv_b", "moe_layers/attn/o", "moe_layers/moe/shared/gate",
        "moe_layers/moe/shared/up", "moe_layers/moe/shared/down", "moe_layers/moe/wi_gate",
        "moe_layers/moe/wi_up", "moe_layers/moe/wo",
        "mtp_0/layer/attn/q_a", "mtp_0/layer/attn/q_b", "mtp_0/layer/attn/kv_a",
        "mtp_0/layer/attn/kv_b", "mtp_0/layer/attn/o", "mtp_0/layer/moe/shared/gate",
        "mtp_0/layer/moe/shared/up", "mtp_0/layer/moe/shared/down", "mtp_0/layer/moe/wi_gate",
        "mtp_0/layer/moe/wi_up", "mtp_0/layer/moe/wo"}


def test_adapter_shapes_per_expert_and_per_head(tiny):
    m, _, params, _ = tiny
    c = default_lora_config()
    c.rank = 4
    ad = init_adapters(jax.random.PRNGKey(1), params, c)
    e, d, f = m.num_experts, m.d_model, m.expert_ffn
    # Routed experts in a 1-layer scanned stack: W [1, E, D, F] -> A [1, E, D, r], B [1, E, r, F].
    assert ad["moe_layers"]["moe"]["wi_gate"]["a"].shape == (1, e, d, 4)
    assert ad["moe_layers"]["moe"]["wi_gate"]["b"].shape == (1, e, 4, f)
    assert ad["moe_layers"]["moe"]["wo"]["a"].shape == (1, e, f, 4)
    # MLA output W_o [1, H, V, D]: heads and value dim are its input.
    assert ad["moe_layers"]["attn"]["o"]["a"].shape == (1, m.num_heads * m.v_head_dim, 4)
    # Unscanned MTP layer: no leading axis for dense weights.
    assert ad["mtp_0"]["layer"]["attn"]["q_a"]["a"].shape == (d, 4)
    flat = traverse_util.flatten_dict(ad)
    assert all(not np.any(np.asarray(x)) for path, x in flat.items() if path[-1] == "b")
    assert all(np.any(np.asarray(x)) for path, x in flat.items() if path[-1] == "a")


def test_zero_b_gives_exactly_the_base_logits(tiny):
    m, model, params, bias = tiny
    c = default_lora_config()
    ad = init_adapters(jax.random.PRNGKey(1), params, c)
    tokens = jax.random.randint(jax.random.PRNGKey(2), (2, 12), 0, m.vocab_size)
    base = forward(model, params, bias, tokens)
    adapted = forward(model, attach(params, ad, c), bias, tokens)
    for x, y in zip(base, adapted):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_merged_model_matches_the_adapter_model(tiny):
    m, model, params, bias = tiny
    c = default_lora_config()
    ad = randomised(init_adapters(jax.random.PRNGKey(1), params, c))
    tokens = jax.random.randint(jax.random.PRNGKey(2), (2, 12), 0, m.vocab_size)
    base = forward(model, params, bias, tokens)
    adapted = forward(model, attach(params, ad, c), bias, tokens)
    merged_params = merge(params, ad, c)
    assert not any(isinstance(x, LoraKernel) for x in jax.tree.leaves(
        merged_params, is_leaf=lambda x: isinstance(x, LoraKernel)))
    merged = forward(model, merged_params, bias, tokens)
    assert float(jnp.abs(adapted[0] - base[0]).max()) > 0.05  # the adapters do something
    for x, y in zip(adapted, merged):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-5, rtol=1e-5)


def test_merge_of_one_kernel_by_hand():
    # W [2, 3] (in 2, out 3), r = 1, alpha 2 -> scale 2: W + 2 * a b.
    c = default_lora_config()
    c.rank, c.alpha, c.targets = 1, 2.0, ["mlp/up"]
    w = jnp.arange(6.0).reshape(2, 3)
    ad = {"mlp": {"up": {"a": jnp.array([[1.0], [2.0]]), "b": jnp.array([[1.0, 0.0, -1.0]])}}}
    out = merge({"mlp": {"up": w}}, ad, c)["mlp"]["up"]
    np.testing.assert_array_equal(np.asarray(out), [[2.0, 1.0, 0.0], [7.0, 4.0, 1.0]])


def test_trainable_fraction_by_hand():
    # One dense MLP W_gate [4, 8], rank 2: A 4*2 + B 2*8 = 24 adapter params, 32 base.
    c = default_lora_config()
    c.rank, c.targets = 2, ["mlp/gate"]
    params = {"mlp": {"gate": jnp.zeros((4, 8)), "up": jnp.zeros((4, 8))}}
    ad = init_adapters(jax.random.PRNGKey(0), params, c)
    r = trainable_report(params, ad)
    assert (r["base_params"], r["adapter_params"]) == (64, 24)
    assert r["trainable_fraction"] == pytest.approx(24 / 88)
    assert r["adapter_bytes"] == 24 * 4


def test_qlora_base_stays_close_to_the_float_model(tiny):
    m, model, params, bias = tiny
    c = default_lora_config()
    ad = randomised(init_adapters(jax.random.PRNGKey(1), params, c), scale=0.02)
    tokens = jax.random.randint(jax.random.PRNGKey(2), (2, 12), 0, m.vocab_size)
    exact = forward(model, attach(params, ad, c), bias, tokens)[0]
    quantised = forward(model, attach(quantize_base(params), ad, c), bias, tokens)[0]
    # NF4 perturbs each weight by ~5% of its block max; the logits move by a small fraction
    # of their spread, not more.
    spread = float(jnp.std(exact))
    assert 0 < float(jnp.abs(quantised - exact).mean()) < 0.25 * spread


def test_bad_config_and_targets_name_the_field(tiny):
    _, _, params, _ = tiny
    c = default_lora_config()
    c.rank = 0
    with pytest.raises(ConfigError, match="lora.rank"):
        validate_lora_config(c)
    c = default_lora_config()
    c.targets = ["attention", "nonexistent/kernel"]
    with pytest.raises(ValueError, match="nonexistent/kernel"):
        init_adapters(jax.random.PRNGKey(0), params, c)
    c.targets = [".*norm/scale"]
    with pytest.raises(ValueError, match="layout is unknown"):
        init_adapters(jax.random.PRNGKey(0), params, c)
