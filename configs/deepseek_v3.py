"""DeepSeek-V3 (671B total, 37B activated per token), the published shapes.

Source: the DeepSeek-V3 technical report and its released config.json.
"""

from moe_jax.models.config import base_model_config
import ml_collections


def get_config(arg=None):
    del arg
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
