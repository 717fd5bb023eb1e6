"""Model configuration: defaults, validation, and derived quantities.

A model config is an `ml_collections.ConfigDict` living at `config.model`. Presets in
`configs/` start from `base_model_config()` and change fields; `validate_model_config`
runs before anything is traced so that a bad value fails with the field's name and the
values it may take, not with a shape error deep inside a jitted function.
"""

from __future__ import annotations

import jax
import ml_collections

from moe_jax.moe.dispatch import ENGINES

ROUTERS = ("softmax", "sigmoid", "sigmoid_bias")
GROUP_SCORES = ("max", "top2_sum")
DISPATCH_ENGINES = tuple(ENGINES)
# What a rematerialised decoder layer keeps for its backward pass ("full": nothing, the
# whole layer is recomputed); model.remat_policy "none" runs the layer without remat.
REMAT_POLICIES = {
    "full": None,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}
ROPE_SCALINGS = ("none", "yarn")
DTYPES = ("float32", "bfloat16", "float16")


class ConfigError(ValueError):
    """A config field holds a value the model cannot use."""

    def __init__(self, field: str, value, expected: str):
        self.field = field
        super().__init__(f"config field `{field}` = {value!r}: expected {expected}")


def base_model_config() -> ml_collections.ConfigDict:
    """Defaults shared by all presets (a small DeepSeek-V3-shaped model)."""
    c = ml_collections.ConfigDict()
    c.vocab_size = 256
    c.d_model = 128
    c.num_layers = 4
    c.num_dense_layers = 1  # DeepSeek's first_k_dense_replace
    c.dense_ffn = 384  # FFN width of the dense layers
    c.num_heads = 4
    # Multi-head Latent Attention. q_lora_rank = 0 means a plain query projection.
    c.q_lora_rank = 0
    c.kv_lora_rank = 64
    c.qk_nope_head_dim = 32
    c.qk_rope_head_dim = 16
    c.v_head_dim = 32
    c.max_seq_len = 512
    # Rotary embeddings; YaRN follows DeepSeek's implementation.
    c.rope_theta = 10000.0
    c.rope_scaling = "none"
    c.rope_factor = 1.0
    c.rope_original_max_position = 4096
    c.rope_beta_fast = 32.0
    c.rope_beta_slow = 1.0
    c.rope_mscale = 1.0
    c.rope_mscale_all_dim = 0.0
    # Mixture of experts.
    c.num_experts = 8
    c.num_shared_experts = 1
    c.expert_ffn = 96
    c.top_k = 2
    c.router = "sigmoid_bias"
    c.n_group = 1
    c.topk_group = 1
    c.group_score = "top2_sum"
    c.norm_topk_prob = True
    c.routed_scaling = 1.0
    c.dispatch = "capacity"
    c.capacity_factor = 1.25
    c.aux_loss_coef = 0.0  # expert-level balance loss (V2); 0 for aux-loss-free V3
    c.seq_aux_loss_coef = 1e-4  # sequence-wise balance loss (V3)
    c.z_loss_coef = 0.0
    c.bias_update_rate = 1e-3  # gamma in b_i <- b_i + gamma * sign(mean_load - load_i)
    # Multi-token prediction (DeepSeek-V3): number of extra depths and loss weight.
    c.mtp_depth = 0
    c.mtp_loss_weight = 0.3
    # Head, norms, numerics.
    c.tie_embeddings = False
    c.rms_eps = 1e-6
    c.init_std = 0.02
    c.dtype = "float32"  # compute dtype
    c.param_dtype = "float32"  # master weights
    # DeepSeek-V3's FP8 recipe for the projections and experts (moe_jax.layers.fp8); the
    # embedding, head, router, norms and attention core stay in `dtype`.
    c.fp8 = False
    c.remat_policy = "none"
    c.scan_layers = True
    return c


def _check_choice(cfg, field, choices):
    value = cfg[field]
    if value not in choices:
        raise ConfigError(f"model.{field}", value, f"one of {list(choices)}")


def _check_positive(cfg, field, allow_zero=False):
    value = cfg[field]
    ok = isinstance(value, (int, float)) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"model.{field}", value, f"a number {bound}")


def validate_model_config(m: ml_collections.ConfigDict) -> None:
    """Raise ConfigError naming the first field that cannot work. Never touches devices."""
    for field in ("vocab_size", "d_model", "num_layers", "num_heads", "kv_lora_rank",
                  "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim", "max_seq_len",
                  "dense_ffn", "expert_ffn", "num_experts", "top_k", "n_group", "topk_group"):
        _check_positive(m, field)
    for field in ("num_dense_layers", "num_shared_experts", "q_lora_rank", "mtp_depth",
                  "aux_loss_coef", "seq_aux_loss_coef", "z_loss_coef", "bias_update_rate",
                  "mtp_loss_weight"):
        _check_positive(m, field, allow_zero=True)
    for field, choices in (("router", ROUTERS), ("group_score", GROUP_SCORES),
                           ("dispatch", DISPATCH_ENGINES), ("remat_policy", ("none", *REMAT_POLICIES)),
                           ("rope_scaling", ROPE_SCALINGS), ("dtype", DTYPES),
                           ("param_dtype", DTYPES)):
        _check_choice(m, field, choices)
    if m.num_dense_layers > m.num_layers:
        raise ConfigError("model.num_dense_layers", m.num_dense_layers,
                          f"at most model.num_layers = {m.num_layers}")
    if m.top_k > m.num_experts:
        raise ConfigError("model.top_k", m.top_k,
                          f"at most model.num_experts = {m.num_experts}")
    if m.num_experts % m.n_group:
        raise ConfigError("model.n_group", m.n_group,
                          f"a divisor of model.num_experts = {m.num_experts}")
    if m.topk_group > m.n_group:
        raise ConfigError("model.topk_group", m.topk_group, f"at most model.n_group = {m.n_group}")
    experts_per_group = m.num_experts // m.n_group
    if m.n_group > 1 and m.topk_group * experts_per_group < m.top_k:
        raise ConfigError("model.topk_group", m.topk_group,
                          f"enough groups to hold top_k = {m.top_k} experts "
                          f"({experts_per_group} experts per group)")
    if m.n_group > 1 and m.group_score == "top2_sum" and experts_per_group < 2:
        raise ConfigError("model.group_score", m.group_score,
                          "'max' when groups hold a single expert")
    if m.qk_rope_head_dim % 2:
        raise ConfigError("model.qk_rope_head_dim", m.qk_rope_head_dim,
                          "an even number (rotary embeddings rotate pairs)")
    if m.capacity_factor <= 0:
        raise ConfigError("model.capacity_factor", m.capacity_factor, "a number > 0")
    if m.rope_scaling == "yarn":
        if m.rope_factor < 1:
            raise ConfigError("model.rope_factor", m.rope_factor, "a number >= 1 for YaRN")
        if m.rope_beta_fast <= m.rope_beta_slow:
            raise ConfigError("model.rope_beta_fast", m.rope_beta_fast,
                              f"greater than model.rope_beta_slow = {m.rope_beta_slow}")
    if m.tie_embeddings not in (True, False):
        raise ConfigError("model.tie_embeddings", m.tie_embeddings, "True or False")
    if m.fp8 not in (True, False):
        raise ConfigError("model.fp8", m.fp8, "True or False")

