import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from helpers import lm_batch, tiny_model_config
from moe_jax.models.transformer import Transformer
from moe_jax.train.losses import model_loss
from moe_jax.train.losses import LossWeights


def small_config(**kw):
    base = dict(d_model=64, num_layers=3, num_dense_layers=1, dense_ffn=128, num_heads=2,
                q_lora_rank=32, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8,
                v_head_dim=16, num_experts=8, expert_ffn=32, top_k=2, n_group=2, topk_group=1)
    base.update(kw)
    return tiny_model_config(**base)


def test_forward_shapes_and_stats():
    m = small_config()
    model = Transformer.from_config(m)
    tokens = jax.random.randint(jax.random.PRNGKey(0), (2, 12), 0, m.vocab_size)
    variables = jax.jit(model.init)(jax.random.PRNGKey(1), tokens)
    logits, extras = jax.jit(model.apply)(variables, tokens)
    assert logits.shape == (2, 12, m.vocab_size) and logits.dtype == jnp.float32
    assert extras["mtp_logits"].shape == (1, 2, 12, m.vocab_size)
    assert extras["moe_stats"]["expert_load"].shape == (2, m.num_experts)  # two MoE layers
    np.testing.assert_allclose(extras["moe_stats"]["expert_load"].sum(-1), 1.0, rtol=1e-6)
    # Layers are scanned: parameters carry a leading layer axis.
    attn_q = nn.unbox(variables)["params"]["moe_layers"]["attn"]["q_b"]
    assert attn_q.shape[0] == 2


def test_model_is_causal_including_mtp_inputs():
    # With a capacity limit, a later token's first choice can take the slot an earlier
    # token's second choice needed; with room for every assignment the model is causal.
    m = small_config(capacity_factor=4.0)
    model = Transformer.from_config(m)
    tokens = jax.random.randint(jax.random.PRNGKey(0), (1, 12), 0, m.vocab_size)
    variables = jax.jit(model.init)(jax.random.PRNGKey(1), tokens)
    changed = tokens.at[:, 8:].set((tokens[:, 8:] + 1) % m.vocab_size)
    apply = jax.jit(model.apply)
    logits, extras = apply(variables, tokens)
    logits2, extras2 = apply(variables, changed)
    np.testing.assert_allclose(logits[:, :8], logits2[:, :8], atol=1e-5)
    # MTP depth 1 at position i reads token i+1, so positions < 7 are unaffected.
    np.testing.assert_allclose(extras["mtp_logits"][:, :, :7], extras2["mtp_logits"][:, :, :7], atol=1e-5)


@pytest.mark.parametrize("variant", [dict(scan_layers=False), dict(remat_policy="full"),
                                     dict(tie_embeddings=True, mtp_depth=0),
                                     dict(router="softmax", n_group=1, topk_group=1, aux_loss_coef=0.01)])
def test_variants_run_forward_and_backward(variant):
    m = small_config(**variant)
    model = Transformer.from_config(m)
    batch = lm_batch(jax.random.randint(jax.random.PRNGKey(0), (2, 9), 0, m.vocab_size))
    variables = nn.unbox(jax.jit(model.init)(jax.random.PRNGKey(1), batch["inputs"]))

    def loss_fn(params):
        logits, extras = model.apply({**variables, "params": params}, batch["inputs"])
        return model_loss(logits, extras, batch, LossWeights.from_config(m))[0]

    loss, grads = jax.jit(jax.value_and_grad(loss_fn))(variables["params"])
    assert np.isfinite(float(loss))
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    assert float(sum(jnp.abs(g).sum() for g in jax.tree.leaves(grads))) > 0


def test_remat_does_not_change_the_loss():
    batch = lm_batch(jax.random.randint(jax.random.PRNGKey(0), (2, 9), 0, 64))
    losses = []
    for policy in ("none", "full", "dots"):
        m = small_config(remat_policy=policy, vocab_size=64)
        model = Transformer.from_config(m)
        variables = model.init(jax.random.PRNGKey(1), batch["inputs"])
        logits, extras = model.apply(variables, batch["inputs"])
        losses.append(float(model_loss(logits, extras, batch, LossWeights.from_config(m))[0]))
    np.testing.assert_allclose(losses, losses[0], rtol=1e-6)


def test_replaying_the_models_own_experts_changes_nothing():
    """Transformer(expert_index=[B, T, M, K]): its own choice reproduces the logits exactly;
    other experts change them; gradients still reach the router through the weights."""
    m = small_config(dispatch="dropless")
    model = Transformer.from_config(m)
    tokens = jax.random.randint(jax.random.PRNGKey(0), (2, 6), 0, m.vocab_size)
    variables = nn.unbox(jax.jit(model.init)(jax.random.PRNGKey(1), tokens))
    apply = jax.jit(model.apply)  # compiled once per argument structure: eager is slower here
    logits, extras = apply(variables, tokens)
    own = jnp.moveaxis(extras["moe_stats"]["expert_index"], 0, 2)  # [M, B, T, K] -> [B, T, M, K]
    assert own.shape == (2, 6, 2, m.top_k)
    replayed, replayed_extras = apply(variables, tokens, None, None, own)
    np.testing.assert_array_equal(replayed, logits)
    np.testing.assert_array_equal(replayed_extras["mtp_logits"], extras["mtp_logits"])
    other = (own + 1) % m.num_experts
    moved, moved_extras = apply(variables, tokens, None, None, other)
    np.testing.assert_array_equal(jnp.moveaxis(moved_extras["moe_stats"]["expert_index"], 0, 2), other)
    assert not np.allclose(moved, logits, atol=1e-4)
    grad = jax.jit(jax.grad(lambda p: model.apply({**variables, "params": p}, tokens, None, None, other)[0].sum()))(
        variables["params"])
    assert float(jnp.abs(grad["moe_layers"]["moe"]["router"]["gate"]).sum()) > 0
    with pytest.raises(ValueError, match="MoE layers"):
        apply(variables, tokens, None, None, own[:, :, :1])


def test_short_stacks_unrolled_equal_the_loop(monkeypatch):
    """Stacks of up to UNROLL_UP_TO layers run unrolled; the same parameters through the
    scan loop must give the same loss and gradients, and the HLO must show the loop gone."""
    from moe_jax.models import transformer

    m = small_config(num_layers=4, num_dense_layers=1, dispatch="reference")
    batch = lm_batch(jax.random.randint(jax.random.PRNGKey(0), (2, 9), 0, m.vocab_size))
    variables = nn.unbox(jax.jit(Transformer.from_config(m).init)(jax.random.PRNGKey(1), batch["inputs"]))

    def run(unroll_up_to):
        monkeypatch.setattr(transformer, "UNROLL_UP_TO", unroll_up_to)
        model = Transformer.from_config(m)

        def loss_fn(params):
            logits, extras = model.apply({**variables, "params": params}, batch["inputs"])
            return model_loss(logits, extras, batch, LossWeights.from_config(m))[0]

        step = jax.jit(jax.value_and_grad(loss_fn))
        hlo = step.lower(variables["params"]).as_text()
        return step(variables["params"]), hlo.count("stablehlo.while")

    (unrolled, unrolled_grads), unrolled_loops = run(4)
    (looped, looped_grads), looped_loops = run(0)
    assert looped_loops > unrolled_loops
    np.testing.assert_allclose(unrolled, looped, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(unrolled_grads), jax.tree.leaves(looped_grads)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
