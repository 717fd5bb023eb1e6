"""Weight-only int8 / int4: per-group error bounds, int4 packing, tree policy, checkpoint
bytes, logits of the quantised model, and the sampler running it."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from helpers import tiny_model_config
from moe_jax import cli
from moe_jax.models.transformer import Transformer
from moe_jax.quant import weights
from moe_jax.quant.checkpoint import is_quantized_checkpoint, load_quantized, save_quantized


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("group_size", [128, 32, 48])
def test_round_trip_error_within_half_a_step_of_each_group(bits, group_size):
    # [3, 200, 5] grouped along the 200-long axis 1: groups of 128 -> [128, 72];
    # 48 -> four of 48 and a partial 8.
    w = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (3, 200, 5)))
    qt = weights.quantize(w, bits, group_size, axis=1)
    back = weights.dequantize(qt)
    assert back.shape == w.shape and back.dtype == np.float32
    num_groups = -(-200 // group_size)
    assert qt.scales.shape == (3, 5, num_groups)
    # Round to nearest: |error| <= scale / 2 = max|w over the group| / (2 qmax), per group.
    top = 2 ** (bits - 1) - 1
    for g in range(num_groups):
        rows = slice(g * group_size, (g + 1) * group_size)
        amax = np.abs(w[:, rows, :]).max(axis=1)  # [3, 5]
        err = np.abs(back[:, rows, :] - w[:, rows, :]).max(axis=1)
        np.testing.assert_allclose(qt.scales[..., g], amax / top, rtol=1e-6)
        assert np.all(err <= amax / (2 * top) * (1 + 1e-5))
    # Each group's largest entry is exact up to float32: it sits on +-qmax.
    assert np.abs(weights.integer_values(qt)).max() == top


def test_short_axis_is_one_group():
    w = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (32, 4)))
    qt = weights.quantize(w, 8, 128, axis=0)
    assert qt.group == 32 and qt.scales.shape == (4, 1)


def test_int4_packing_round_trip_is_exact():
    values = np.arange(-8, 8, dtype=np.int8)
    odd = np.concatenate([values, values[::-1], [5]]).astype(np.int8)  # 33 values
    for q in (values, odd, np.random.default_rng(0).integers(-8, 8, (7, 9)).astype(np.int8)):
        packed = weights.pack_int4(q)
        assert packed.dtype == np.uint8 and packed.size == (q.size + 1) // 2
        np.testing.assert_array_equal(weights.unpack_int4(packed, q.size), q.reshape(-1))
    # Entry 2i in the low nibble: [1, -1] -> 0x01 | 0xF0.
    assert weights.pack_int4(np.array([1, -1], np.int8)).tolist() == [0xF1]
    with pytest.raises(ValueError, match=r"\[-8, 7\]"):
        weights.pack_int4(np.array([9], np.int8))


def test_bad_bits_and_group_size_are_named():
    with pytest.raises(ValueError, match="bits = 3"):
        weights.quantize(np.ones((4, 4)), 3, 128, 0)
    with pytest.raises(ValueError, match="group_size = 0"):
        weights.quantize(np.ones((4, 4)), 8, 0, 0)


def _model(**kw):
    base = dict(d_model=64, num_layers=2, num_dense_layers=1, dense_ffn=128, num_heads=2,
                q_lora_rank=32, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8,
                v_head_dim=16, num_experts=4, expert_ffn=32, top_k=2, n_group=1, topk_group=1,
                mtp_depth=0, dispatch="dropless")
    base.update(kw)
    m = tiny_model_config(**base)
    tokens = jax.random.randint(jax.random.PRNGKey(0), (2, 12), 0, m.vocab_size)
    variables = nn.unbox(Transformer.from_config(m).init(jax.random.PRNGKey(1), tokens))
    params = jax.tree.map(np.asarray, variables["params"])
    return m, tokens, params, jax.tree.map(np.asarray, variables.get("router_bias", {}))


def test_tree_policy_quantises_kernels_and_keeps_norms_and_router_float():
    m, _, params, _ = _model()
    tree = weights.quantize_tree(params, 8, 128)
    moe = tree["moe_layers"]["moe"]
    for leaf in (moe["wi_gate"], moe["wi_up"], moe["wo"], moe["shared"]["down"],
                 tree["moe_layers"]["attn"]["o"], tree["dense_layers"]["mlp"]["gate"],
                 tree["embed"]["embedding"], tree["head"]):
        assert isinstance(leaf, weights.QuantizedTensor)
    # Experts [layers, E, D, F] group along D; o [layers, H, V, D] along V.
    assert moe["wi_gate"].axis == 2 and tree["moe_layers"]["attn"]["o"].axis == 2
    for leaf in (moe["router"]["gate"], tree["final_norm"]["scale"],
                 tree["moe_layers"]["attn_norm"]["scale"]):
        assert isinstance(leaf, np.ndarray)


def test_checkpoint_bytes_logits_and_sampler(tmp_path, capsys):
    m, tokens, params, router_bias = _model()
    logits32, _ = Transformer.from_config(m).apply({"params": params, "router_bias": router_bias}, tokens)
    sizes, rels = {}, {}
    for bits in (None, 8, 4):
        out = tmp_path / f"q{bits}"
        written = save_quantized(str(out), params, router_bias, m, bits)
        sizes[bits] = written["bytes"]
        assert is_quantized_checkpoint(str(out))
        q_params, q_bias, q_config, info = load_quantized(str(out))
        assert info["bits"] == bits and q_config.d_model == m.d_model
        assert jax.tree.structure(q_params) == jax.tree.structure(params)
        logits, _ = Transformer.from_config(m).apply({"params": q_params, "router_bias": q_bias}, tokens)
        rels[bits] = float(jnp.linalg.norm(logits - logits32) / jnp.linalg.norm(logits32))
    assert rels[None] == 0.0
    # Rounding to steps of s = max|w| / qmax leaves an RMS error of s / sqrt(12) per
    # weight; for Gaussian groups max|w| ~ 3 sigma, so ~3 / (qmax sqrt(12)) relative:
    # 0.007 for int8, 0.12 for int4. The logits move by that order (measured 0.008, 0.14).
    assert rels[8] < 0.02 and rels[4] < 0.3 and rels[8] < rels[4] / 5
    # Most bytes are kernels: 1 byte (+ 4/64 to 4/128 of scales) vs 4; int4 about half of int8.
    # At d_model 64 the float norms and router weigh more than in a real model.
    assert sizes[None] / sizes[8] > 3.3
    assert sizes[8] / sizes[4] > 1.6

    # The sampler runs the int4 checkpoint with no --config (model_config.json inside).
    rc = cli.main(["sample", "--checkpoint", str(tmp_path / "q4"), "--prompt", "12+3=",
                   "--max-new-tokens", "4", "--json", "--override", "model.dispatch=reference"])
    assert rc == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["prompt"] == "12+3=" and line["tokens"] <= 4
