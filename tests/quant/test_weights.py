"""Weight-only int8 / int4 of a model: which leaves the policy quantises, the export's
bytes written and read back, logits of the quantised model, and the sampler running it
(the numerics themselves: tests/layers/test_int_quant.py)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from helpers import tiny_model_config
from moe_jax import cli
from moe_jax.interop.quantized import is_quantized_checkpoint, load_quantized
from moe_jax.layers.int_quant import QuantizedTensor
from moe_jax.models.transformer import Transformer
from moe_jax.quant import weights
from moe_jax.quant.checkpoint import save_quantized


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
        assert isinstance(leaf, QuantizedTensor)
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
