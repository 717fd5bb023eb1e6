"""DeepSeek-V2-Lite (15.7B total, 2.4B activated per token), the published shapes.

Source: the DeepSeek-V2 paper (appendix on V2-Lite) and its released config.json.
No query low-rank projection, softmax gate without group limit or renormalisation.
"""

from moe_jax.models.config import base_model_config
import ml_collections


def get_config(arg=None):
    del arg
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
