"""Imported Hugging Face DeepSeek checkpoints compute what transformers computes."""

import os

import flax.linen as nn
import jax
import numpy as np
import pytest

from interop.tiny_hf import CONFIGS, hf_greedy, hf_logits, no_drop, our_forward, our_greedy
from moe_jax.interop.hf import import_hf
from moe_jax.models.transformer import Transformer


@pytest.fixture(params=sorted(CONFIGS))
def case(request, hf_checkpoints):
    return (request.param,) + hf_checkpoints(request.param)


PROMPT, NEW_TOKENS = 6, 20


def test_checkpoint_is_sharded(case):
    _, _, directory = case
    assert "model.safetensors.index.json" in os.listdir(directory)
    assert sum(f.endswith(".safetensors") for f in os.listdir(directory)) >= 3


def test_logits_and_greedy_continuation_match_transformers(case):
    name, model, directory = case
    imported = import_hf(directory, progress=False)
    m = no_drop(imported.model_config)
    variables = {"params": imported.params, "router_bias": imported.router_bias}
    tokens = np.random.RandomState(1).randint(0, m.vocab_size, (2, PROMPT + NEW_TOKENS))
    ours = np.asarray(our_forward(m)(variables, tokens))
    np.testing.assert_allclose(ours, hf_logits(model, tokens), atol=1e-4, rtol=0)

    prompt = tokens[:, :PROMPT]
    expected = hf_greedy(model, prompt, NEW_TOKENS)
    np.testing.assert_array_equal(our_greedy(m, variables, prompt, NEW_TOKENS), expected)
    if not m.tie_embeddings:  # tied tiny models tend to repeat their input token
        assert len(set(expected[0].tolist())) > 1, "a constant continuation would prove little"


def test_imported_config_reflects_hf_semantics(case):
    name, model, directory = case
    m = import_hf(directory, progress=False).model_config
    hf = model.config
    assert (m.num_layers, m.num_dense_layers, m.num_experts, m.top_k) == (
        hf.num_hidden_layers, hf.first_k_dense_replace, hf.n_routed_experts, hf.num_experts_per_tok)
    assert m.tie_embeddings == hf.tie_word_embeddings
    assert m.q_lora_rank == (hf.q_lora_rank or 0)
    assert m.rope_scaling == ("yarn" if hf.rope_parameters["rope_type"] == "yarn" else "none")
    if name.startswith("v3"):
        assert (m.router, m.group_score) == ("sigmoid_bias", "top2_sum")
    else:  # transformers' V2 never renormalises and always applies routed_scaling_factor
        assert (m.router, m.group_score, m.norm_topk_prob) == ("softmax", "max", False)
        assert m.n_group == (hf.n_group if hf.topk_method == "group_limited_greedy" else 1)
    assert m.routed_scaling == pytest.approx(hf.routed_scaling_factor)


def test_imported_tree_matches_model_init(case):
    _, _, directory = case
    imported = import_hf(directory, progress=False)
    init = lambda: nn.unbox(Transformer.from_config(imported.model_config).init(
        jax.random.PRNGKey(0), np.zeros((1, 4), np.int32)))
    want = jax.tree.map(lambda x: (x.shape, x.dtype), dict(jax.eval_shape(init)))
    want.pop("router_load", None)  # per-step loads, written by apply, not stored
    ours = {"params": imported.params}
    if imported.router_bias:
        ours["router_bias"] = imported.router_bias
    assert jax.tree.map(lambda x: (x.shape, x.dtype), ours) == want


def test_router_bias_lands_in_its_collection(case):
    name, model, directory = case
    imported = import_hf(directory, progress=False)
    if not name.startswith("v3"):
        assert imported.router_bias == {}
        return
    first_moe = model.config.first_k_dense_replace
    want = np.stack([layer.mlp.gate.e_score_correction_bias.numpy()
                     for layer in model.model.layers[first_moe:]])
    np.testing.assert_array_equal(imported.router_bias["moe_layers"]["moe"]["router"]["bias"], want)
    assert np.all(want != 0)


def test_rotate_half_checkpoints_need_their_rope_rows_permuted(hf_checkpoints, tmp_path):
    """v3_plain_tied has rope_interleave=false; read as if interleaved, its logits go wrong."""
    import shutil

    from interop.tiny_hf import rewrite_config
    model, directory = hf_checkpoints("v3_plain_tied")
    lying = str(tmp_path / "lying")
    shutil.copytree(directory, lying)
    rewrite_config(lying, rope_interleave=True)
    imported = import_hf(lying, progress=False)
    m = no_drop(imported.model_config)
    tokens = np.random.RandomState(1).randint(0, m.vocab_size, (2, PROMPT + NEW_TOKENS))
    ours = np.asarray(our_forward(m)(dict(params=imported.params, router_bias=imported.router_bias), tokens))
    assert np.abs(ours - hf_logits(model, tokens)).max() > 1e-2


def test_import_places_each_leaf_on_its_sharding(hf_checkpoints, monkeypatch):
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    from moe_jax.interop.safetensors_io import ShardReader

    reads = []
    real_read = ShardReader.read
    monkeypatch.setattr(ShardReader, "read", lambda self, info: reads.append(info) or real_read(self, info))
    _, directory = hf_checkpoints("v3_group_yarn")  # 4 experts
    host = import_hf(directory, progress=False)
    host_reads, reads[:] = len(reads), []
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(4, 2), ("expert", "data"))
    replicated = NamedSharding(mesh, P())
    by_expert = NamedSharding(mesh, P(None, "expert"))  # [L, E, ...]
    shardings = {
        "params": jax.tree_util.tree_map_with_path(
            lambda path, x: by_expert if path[-1].key in ("wi_gate", "wi_up", "wo") else replicated, host.params),
        "router_bias": jax.tree.map(lambda x: replicated, host.router_bias)}
    placed = import_hf(directory, shardings=shardings, progress=False)
    assert len(reads) == host_reads  # each tensor read once, whatever the device layout
    wi_up = placed.params["moe_layers"]["moe"]["wi_up"]
    assert isinstance(wi_up, jax.Array) and wi_up.sharding == by_expert
    assert wi_up.addressable_shards[0].data.shape == (2, 1, 32, 16)
    for a, b in zip(jax.tree.leaves((host.params, host.router_bias)), jax.tree.leaves((placed.params, placed.router_bias))):
        np.testing.assert_array_equal(a, np.asarray(b))
