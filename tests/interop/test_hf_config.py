"""config.json <-> model ConfigDict, and tensor names against the model's own init."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from helpers import tiny_model_config
from moe_jax.config import load_config
from moe_jax.interop.hf_config import UnsupportedCheckpointError, hf_config_from_model, model_config_from_hf
from moe_jax.interop.hf_names import checkpoint_slots, leaf_shapes
from moe_jax.models.transformer import Transformer

# The published config.json files (model-defining keys; auto_map etc. left out).
DEEPSEEK_V3 = {
    "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "attention_bias": False,
    "aux_loss_alpha": 0.001, "bos_token_id": 0, "eos_token_id": 1, "ep_size": 1, "first_k_dense_replace": 3,
    "hidden_act": "silu", "hidden_size": 7168, "initializer_range": 0.02, "intermediate_size": 18432,
    "kv_lora_rank": 512, "max_position_embeddings": 163840, "moe_intermediate_size": 2048,
    "moe_layer_freq": 1, "n_group": 8, "n_routed_experts": 256, "n_shared_experts": 1, "norm_topk_prob": True,
    "num_attention_heads": 128, "num_experts_per_tok": 8, "num_hidden_layers": 61, "num_key_value_heads": 128,
    "num_nextn_predict_layers": 1, "q_lora_rank": 1536, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
    "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                            "weight_block_size": [128, 128]},
    "rms_norm_eps": 1e-06,
    "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0, "mscale_all_dim": 1.0,
                     "original_max_position_embeddings": 4096, "type": "yarn"},
    "rope_theta": 10000, "routed_scaling_factor": 2.5, "scoring_func": "sigmoid", "seq_aux": True,
    "tie_word_embeddings": False, "topk_group": 4, "topk_method": "noaux_tc", "torch_dtype": "bfloat16",
    "v_head_dim": 128, "vocab_size": 129280}
DEEPSEEK_V2_LITE = {
    "architectures": ["DeepseekV2ForCausalLM"], "model_type": "deepseek_v2", "attention_bias": False,
    "aux_loss_alpha": 0.001, "first_k_dense_replace": 1, "hidden_act": "silu", "hidden_size": 2048,
    "initializer_range": 0.02, "intermediate_size": 10944, "kv_lora_rank": 512, "max_position_embeddings": 163840,
    "moe_intermediate_size": 1408, "moe_layer_freq": 1, "n_group": 1, "n_routed_experts": 64,
    "n_shared_experts": 2, "norm_topk_prob": False, "num_attention_heads": 16, "num_experts_per_tok": 6,
    "num_hidden_layers": 27, "num_key_value_heads": 16, "q_lora_rank": None, "qk_nope_head_dim": 128,
    "qk_rope_head_dim": 64, "rms_norm_eps": 1e-06,
    "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 0.707, "mscale_all_dim": 0.707,
                     "original_max_position_embeddings": 4096, "type": "yarn"},
    "rope_theta": 10000, "routed_scaling_factor": 1.0, "scoring_func": "softmax", "seq_aux": True,
    "tie_word_embeddings": False, "topk_group": 1, "topk_method": "greedy", "torch_dtype": "bfloat16",
    "v_head_dim": 128, "vocab_size": 102400}

ARCHITECTURE_FIELDS = (
    "vocab_size", "d_model", "num_layers", "num_dense_layers", "dense_ffn", "num_heads", "q_lora_rank",
    "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "max_seq_len", "rope_theta",
    "rope_scaling", "rope_factor", "rope_original_max_position", "rope_beta_fast", "rope_beta_slow",
    "rope_mscale", "rope_mscale_all_dim", "num_experts", "num_shared_experts", "expert_ffn", "top_k",
    "router", "n_group", "topk_group", "norm_topk_prob", "routed_scaling", "tie_embeddings")


@pytest.mark.parametrize("published, preset", [(DEEPSEEK_V3, "configs/deepseek_v3.py"),
                                               (DEEPSEEK_V2_LITE, "configs/deepseek_v2_lite.py")])
def test_published_configs_map_to_our_presets(published, preset):
    m, layout = model_config_from_hf(published)
    want = load_config(preset).model
    assert {f: m[f] for f in ARCHITECTURE_FIELDS} == {f: want[f] for f in ARCHITECTURE_FIELDS}
    if published is DEEPSEEK_V3:
        assert (layout.mtp_layers, layout.fp8_block, m.group_score) == (1, (128, 128), "top2_sum")
    back = hf_config_from_model(m, base=published, torch_dtype="bfloat16")
    assert back == {k: v for k, v in published.items() if k != "quantization_config"}
    if "quantization_config" in published:
        assert hf_config_from_model(m, base=published, quantized=True) == published


def test_legacy_and_new_rope_spellings_agree():
    new = dict(DEEPSEEK_V3, rope_parameters=dict(DEEPSEEK_V3["rope_scaling"], rope_type="yarn", rope_theta=10000.0))
    del new["rope_scaling"], new["rope_theta"], new["rope_parameters"]["type"]
    assert model_config_from_hf(new)[0] == model_config_from_hf(DEEPSEEK_V3)[0]
    no_factor = dict(new, rope_parameters={k: v for k, v in new["rope_parameters"].items() if k != "factor"})
    assert model_config_from_hf(no_factor)[0].rope_factor == 163840 / 4096  # transformers' rule


def test_mscale_without_mscale_all_dim_follows_transformers():
    """transformers scales cos/sin by mscale(factor) = 0.1 ln(factor) + 1, ignoring `mscale`,
    unless both mscale and mscale_all_dim are set."""
    rope = dict(DEEPSEEK_V2_LITE["rope_scaling"], mscale=0.707, mscale_all_dim=0)
    m, layout = model_config_from_hf(dict(DEEPSEEK_V2_LITE, rope_scaling=rope))
    assert (m.rope_mscale, m.rope_mscale_all_dim) == (1.0, 0.0)
    assert layout.notes and "ignored" in layout.notes[0]
    with pytest.raises(UnsupportedCheckpointError, match="mscale_all_dim set without mscale"):
        model_config_from_hf(dict(DEEPSEEK_V2_LITE, rope_scaling=dict(rope, mscale=None, mscale_all_dim=1.0)))


def test_v2_norm_topk_prob_is_ignored_as_transformers_does():
    m, layout = model_config_from_hf(dict(DEEPSEEK_V2_LITE, norm_topk_prob=True, routed_scaling_factor=16.0))
    assert (m.norm_topk_prob, m.routed_scaling) == (False, 16.0)
    assert any("norm_topk_prob" in note for note in layout.notes)


def test_absent_keys_take_transformers_defaults():
    m, _ = model_config_from_hf({"model_type": "deepseek_v3", "num_hidden_layers": 4, "first_k_dense_replace": 1})
    assert (m.d_model, m.num_experts, m.top_k, m.n_group, m.routed_scaling, m.rope_scaling) == (
        7168, 256, 8, 8, 2.5, "none")
    with pytest.raises(UnsupportedCheckpointError, match="num_experts_per_tok is missing"):
        model_config_from_hf({"model_type": "deepseek_v2"})  # V2's default is None


@pytest.mark.parametrize("scan_layers", [True, False])
@pytest.mark.parametrize("tie", [False, True])
def test_slots_cover_exactly_the_model_variables(scan_layers, tie):
    m = tiny_model_config(scan_layers=scan_layers, tie_embeddings=tie, mtp_depth=1)
    init = lambda: nn.unbox(Transformer.from_config(m).init(jax.random.PRNGKey(0), np.zeros((1, 4), np.int32)))
    variables = jax.eval_shape(init)
    want = {(collection, tuple(k.key for k in path)): leaf.shape
            for collection in ("params", "router_bias")
            for path, leaf in jax.tree_util.tree_leaves_with_path(variables[collection])}
    slots = checkpoint_slots(m, "deepseek_v3")
    assert leaf_shapes(slots) == want
    # every slice of every leaf is written exactly once
    covered = {}
    for s in slots:
        if not s.duplicate:
            covered[(s.collection, s.path)] = covered.get((s.collection, s.path), 0) + int(np.prod(s.slice_shape))
    assert covered == {k: int(np.prod(v)) for k, v in want.items()}
    names = [s.hf_name for s in slots]
    assert len(names) == len(set(names))
    assert f"model.layers.{m.num_layers}.eh_proj.weight" in names
    assert ("lm_head.weight" in names) == (not tie)
