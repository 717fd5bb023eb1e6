"""Model presets, by name: a tiny CPU model, DeepSeek-V2-Lite and DeepSeek-V3.

`moe_jax.config.load_config("deepseek_v3")` (or `moe-jax params --config deepseek_v3`,
from any directory) resolves a name here; `configs/<name>.py` in the repository reads
the same functions. Each returns a ConfigDict with a `model` section: the defaults of
`base_model_config()` with the preset's column of `SHAPES` written over them.

The published shapes (V2-Lite: the DeepSeek-V2 paper's appendix and its released
config.json; V3: the DeepSeek-V3 technical report and its config.json) sit side by side
in one table, so a field that differs between the models is read across one line.
"""

from __future__ import annotations

import ml_collections

from moe_jax.models.config import base_model_config

# A cell left at the default of `base_model_config()`.
BASE = None

COLUMNS = ("tiny", "deepseek_v2_lite", "deepseek_v3")

# field                        tiny            V2-Lite       V3
SHAPES = {
    "vocab_size":                 (128,           102400,       129280),
    "d_model":                    (192,           2048,         7168),
    "num_layers":                 (4,             27,           61),
    "num_dense_layers":           (1,             1,            3),
    "dense_ffn":                  (512,           10944,        18432),
    "num_heads":                  (4,             16,           128),
    # Multi-head Latent Attention: V2-Lite has no query low-rank projection.
    "q_lora_rank":                (96,            0,            1536),
    "kv_lora_rank":               (64,            512,          512),
    "qk_nope_head_dim":           (32,            128,          128),
    "qk_rope_head_dim":           (16,            64,           64),
    "v_head_dim":                 (32,            128,          128),
    "max_seq_len":                (256,           163840,       163840),
    # YaRN: a 4K pretraining context stretched 40x.
    "rope_theta":                 (BASE,          10000.0,      10000.0),
    "rope_scaling":               (BASE,          "yarn",       "yarn"),
    "rope_factor":                (BASE,          40.0,         40.0),
    "rope_original_max_position": (BASE,          4096,         4096),
    "rope_beta_fast":             (BASE,          32.0,         32.0),
    "rope_beta_slow":             (BASE,          1.0,          1.0),
    "rope_mscale":                (BASE,          0.707,        1.0),
    "rope_mscale_all_dim":        (BASE,          0.707,        1.0),
    # Fine-grained routed experts plus shared experts.
    "num_experts":                (16,            64,           256),
    "num_shared_experts":         (1,             2,            1),
    "expert_ffn":                 (128,           1408,         2048),
    "top_k":                      (4,             6,            8),
    # V2-Lite: softmax gate, no group limit, no renormalisation, a balance loss.
    # V3 (and tiny): sigmoid gate with the balancing bias, group-limited routing.
    "router":                     ("sigmoid_bias", "softmax",   "sigmoid_bias"),
    "n_group":                    (4,             1,            8),
    "topk_group":                 (2,             1,            4),
    "group_score":                ("top2_sum",    BASE,         "top2_sum"),
    "norm_topk_prob":             (True,          False,        True),
    "routed_scaling":             (1.0,           1.0,          2.5),
    "aux_loss_coef":              (BASE,          0.001,        0.0),
    "seq_aux_loss_coef":          (BASE,          0.0,          1e-4),
    # tiny: faster than V3's 1e-3, as a short CPU run must balance within a few hundred
    # steps.
    "bias_update_rate":           (1e-2,          0.0,          1e-3),
    # Multi-token prediction: one extra depth in V3 (and tiny).
    "mtp_depth":                  (1,             0,            1),
    "mtp_loss_weight":            (0.3,           BASE,         0.3),
    "tie_embeddings":             (BASE,          False,        False),
    "dtype":                      (BASE,          "bfloat16",   "bfloat16"),
    "remat_policy":               (BASE,          "full",       "full"),
}


def _preset(column: str) -> ml_collections.ConfigDict:
    m = base_model_config()
    index = COLUMNS.index(column)
    for field, cells in SHAPES.items():
        if field not in m:  # a misspelt row would otherwise add a field nothing reads
            raise KeyError(f"SHAPES row {field!r} is not a model config field")
        if cells[index] is not BASE:
            m[field] = cells[index]
    return ml_collections.ConfigDict({"model": m})


def tiny() -> ml_collections.ConfigDict:
    """A few-million-parameter DeepSeek-V3-shaped model that trains on a laptop CPU.

    Same ingredients as V3 at toy size: MLA with q low-rank, one dense first layer, fine-
    grained routed experts plus a shared expert, sigmoid gate with the balancing bias,
    group-limited routing, and one multi-token-prediction module.
    """
    return _preset("tiny")


def deepseek_v2_lite() -> ml_collections.ConfigDict:
    """DeepSeek-V2-Lite (15.7B total, 2.4B activated per token), the published shapes."""
    return _preset("deepseek_v2_lite")


def deepseek_v3() -> ml_collections.ConfigDict:
    """DeepSeek-V3 (671B total, 37B activated per token), the published shapes."""
    return _preset("deepseek_v3")


PRESETS = {"tiny": tiny, "deepseek_v2_lite": deepseek_v2_lite, "deepseek_v3": deepseek_v3}


def preset(name: str) -> ml_collections.ConfigDict:
    if name not in PRESETS:
        raise KeyError(f"model preset {name!r}: expected one of {sorted(PRESETS)}")
    return PRESETS[name]()
