"""Model presets, by name: a tiny CPU model, DeepSeek-V2-Lite and DeepSeek-V3.

`moe_jax.config.load_config("deepseek_v3")` (or `moe-jax params --config deepseek_v3`,
from any directory) resolves a name here; `configs/<name>.py` in the repository reads
the same functions. Each returns a ConfigDict with a `model` section.
"""

from __future__ import annotations

import ml_collections

from moe_jax.models.config import base_model_config


def tiny() -> ml_collections.ConfigDict:
    """A few-million-parameter DeepSeek-V3-shaped model that trains on a laptop CPU.

    Same ingredients as V3 at toy size: MLA with q low-rank, one dense first layer, fine-
    grained routed experts plus a shared expert, sigmoid gate with the balancing bias,
    group-limited routing, and one multi-token-prediction module.
    """
    m = base_model_config()
    m.vocab_size = 128
    m.d_model = 192
    m.num_layers = 4
    m.num_dense_layers = 1
    m.dense_ffn = 512
    m.num_heads = 4
    m.q_lora_rank = 96
    m.kv_lora_rank = 64
    m.qk_nope_head_dim = 32
    m.qk_rope_head_dim = 16
    m.v_head_dim = 32
    m.max_seq_len = 256
    m.num_experts = 16
    m.num_shared_experts = 1
    m.expert_ffn = 128
    m.top_k = 4
    m.router = "sigmoid_bias"
    m.n_group = 4
    m.topk_group = 2
    m.group_score = "top2_sum"
    m.norm_topk_prob = True
    m.routed_scaling = 1.0
    # Faster than V3's 1e-3: a short CPU run must balance within a few hundred steps.
    m.bias_update_rate = 1e-2
    m.mtp_depth = 1
    m.mtp_loss_weight = 0.3
    return ml_collections.ConfigDict({"model": m})


def deepseek_v2_lite() -> ml_collections.ConfigDict:
    """DeepSeek-V2-Lite (15.7B total, 2.4B activated per token), the published shapes.

    Source: the DeepSeek-V2 paper (appendix on V2-Lite) and its released config.json.
    No query low-rank projection, softmax gate without group limit or renormalisation.
    """
    m = base_model_config()
    m.vocab_size = 102400
    m.d_model = 2048
    m.num_layers = 27
    m.num_dense_layers = 1
    m.dense_ffn = 10944
    m.num_heads = 16
    m.q_lora_rank = 0
    m.kv_lora_rank = 512
    m.qk_nope_head_dim = 128
    m.qk_rope_head_dim = 64
    m.v_head_dim = 128
    m.max_seq_len = 163840
    m.rope_theta = 10000.0
    m.rope_scaling = "yarn"
    m.rope_factor = 40.0
    m.rope_original_max_position = 4096
    m.rope_beta_fast = 32.0
    m.rope_beta_slow = 1.0
    m.rope_mscale = 0.707
    m.rope_mscale_all_dim = 0.707
    m.num_experts = 64
    m.num_shared_experts = 2
    m.expert_ffn = 1408
    m.top_k = 6
    m.router = "softmax"
    m.n_group = 1
    m.topk_group = 1
    m.norm_topk_prob = False
    m.routed_scaling = 1.0
    m.aux_loss_coef = 0.001
    m.seq_aux_loss_coef = 0.0
    m.bias_update_rate = 0.0
    m.mtp_depth = 0
    m.tie_embeddings = False
    m.dtype = "bfloat16"
    m.remat_policy = "full"
    return ml_collections.ConfigDict({"model": m})


def deepseek_v3() -> ml_collections.ConfigDict:
    """DeepSeek-V3 (671B total, 37B activated per token), the published shapes.

    Source: the DeepSeek-V3 technical report and its released config.json.
    """
    m = base_model_config()
    m.vocab_size = 129280
    m.d_model = 7168
    m.num_layers = 61
    m.num_dense_layers = 3
    m.dense_ffn = 18432
    m.num_heads = 128
    m.q_lora_rank = 1536
    m.kv_lora_rank = 512
    m.qk_nope_head_dim = 128
    m.qk_rope_head_dim = 64
    m.v_head_dim = 128
    m.max_seq_len = 163840
    m.rope_theta = 10000.0
    m.rope_scaling = "yarn"
    m.rope_factor = 40.0
    m.rope_original_max_position = 4096
    m.rope_beta_fast = 32.0
    m.rope_beta_slow = 1.0
    m.rope_mscale = 1.0
    m.rope_mscale_all_dim = 1.0
    m.num_experts = 256
    m.num_shared_experts = 1
    m.expert_ffn = 2048
    m.top_k = 8
    m.router = "sigmoid_bias"
    m.n_group = 8
    m.topk_group = 4
    m.group_score = "top2_sum"
    m.norm_topk_prob = True
    m.routed_scaling = 2.5
    m.aux_loss_coef = 0.0
    m.seq_aux_loss_coef = 1e-4
    m.bias_update_rate = 1e-3
    m.mtp_depth = 1
    m.mtp_loss_weight = 0.3
    m.tie_embeddings = False
    m.dtype = "bfloat16"
    m.remat_policy = "full"
    return ml_collections.ConfigDict({"model": m})


PRESETS = {"tiny": tiny, "deepseek_v2_lite": deepseek_v2_lite, "deepseek_v3": deepseek_v3}


def preset(name: str) -> ml_collections.ConfigDict:
    if name not in PRESETS:
        raise KeyError(f"model preset {name!r}: expected one of {sorted(PRESETS)}")
    return PRESETS[name]()
