"""A few-million-parameter DeepSeek-V3-shaped model that trains on a laptop CPU.

Same ingredients as V3 at toy size: MLA with q low-rank, one dense first layer, fine-
grained routed experts plus a shared expert, sigmoid gate with the balancing bias,
group-limited routing, and one multi-token-prediction module.
"""

from moe_jax.models.config import base_model_config
import ml_collections


def get_config(arg=None):
    del arg
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
