"""config.json of a Hugging Face DeepSeek checkpoint <-> our `config.model` ConfigDict.

Supported: `model_type` "deepseek_v2" (DeepSeek-V2, V2-Lite; `DeepseekV2ForCausalLM`)
and "deepseek_v3" (DeepSeek-V3, R1; `DeepseekV3ForCausalLM`). The semantics follow
transformers' implementation of those classes (>= 5.15, the `interop` extra's pin:
DeepseekV2 exists since 4.54 but only applies YaRN's mscale^2 to the attention scale,
as DeepSeek's own code does, from 5.15 on), since that is what checkpoints are tested
against:

- Routing. V2: softmax gate; `topk_method` "greedy" (no group limit) or
  "group_limited_greedy" (keep the `topk_group` best of `n_group` groups, a group scored
  by its best expert -> our `group_score = "max"`); combine weights are the top-k scores
  times `routed_scaling_factor`, never renormalised (transformers ignores V2's
  `norm_topk_prob`, so we import it as False). V3: "noaux_tc" -> our "sigmoid_bias"
  router with `group_score = "top2_sum"`, renormalised when `norm_topk_prob`.
- RoPE. `rope_theta` + `rope_scaling` {"type": "yarn", ...} as published, or
  `rope_parameters` {"rope_type": ..., "rope_theta": ...} as transformers >= 5 writes.
  transformers derives the cos/sin scale as mscale(f, mscale) / mscale(f, mscale_all_dim)
  only when both are set and mscale(f) otherwise; we map the second case to mscale = 1,
  mscale_all_dim = 0, which gives the same numbers.
- Absent keys take transformers' class defaults (`HF_DEFAULTS`).
- Training settings (`aux_loss_alpha`, `seq_aux`, ...) are not mapped: balance-loss
  coefficients and bias update rates come from the experiment config.

Anything our model cannot compute exactly (biases, other activations, other rope
types, `moe_layer_freq` != 1, ...) raises UnsupportedCheckpointError naming every
offending field at once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import ml_collections

from moe_jax.layers.fp8 import BLOCK
from moe_jax.models.config import ConfigError, base_model_config, validate_model_config

# The quantization_config of DeepSeek-V3's block-scaled FP8 checkpoints.
QUANTIZATION_CONFIG = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                       "weight_block_size": [BLOCK, BLOCK]}

log = logging.getLogger(__name__)

ARCHITECTURES = {"deepseek_v2": "DeepseekV2ForCausalLM", "deepseek_v3": "DeepseekV3ForCausalLM"}

# transformers' DeepseekV2Config / DeepseekV3Config defaults for the keys we read.
_COMMON_DEFAULTS = dict(hidden_act="silu", initializer_range=0.02, rms_norm_eps=1e-6,
                        tie_word_embeddings=False, attention_bias=False, rope_theta=10000.0)
HF_DEFAULTS = {
    "deepseek_v2": dict(_COMMON_DEFAULTS, vocab_size=102400, hidden_size=4096, intermediate_size=11008,
                        num_hidden_layers=32, num_attention_heads=32, max_position_embeddings=2048,
                        mlp_bias=False, first_k_dense_replace=0, kv_lora_rank=512, q_lora_rank=1536,
                        n_group=None, n_routed_experts=64, n_shared_experts=2, qk_nope_head_dim=128,
                        qk_rope_head_dim=64, routed_scaling_factor=1.0, topk_group=None,
                        topk_method="greedy", norm_topk_prob=False, v_head_dim=128,
                        num_experts_per_tok=None, moe_intermediate_size=1407),
    "deepseek_v3": dict(_COMMON_DEFAULTS, vocab_size=129280, hidden_size=7168, intermediate_size=18432,
                        moe_intermediate_size=2048, num_hidden_layers=61, num_attention_heads=128,
                        n_shared_experts=1, n_routed_experts=256, routed_scaling_factor=2.5,
                        kv_lora_rank=512, q_lora_rank=1536, qk_rope_head_dim=64, v_head_dim=128,
                        qk_nope_head_dim=128, n_group=8, topk_group=4, num_experts_per_tok=8,
                        first_k_dense_replace=3, norm_topk_prob=True, max_position_embeddings=4096,
                        rope_interleave=True, num_nextn_predict_layers=1),
}


class UnsupportedCheckpointError(ValueError):
    """The checkpoint's architecture or config asks for something our model cannot compute."""

    def __init__(self, problems):
        self.problems = list(problems)
        super().__init__("unsupported Hugging Face checkpoint:\n  " + "\n  ".join(self.problems))


@dataclass
class HFLayout:
    """What the tensor names and layouts depend on beyond our model config."""

    model_type: str
    rope_interleaved: bool = True  # False: V3 with rope_interleave=false (rotate-half pairs)
    mtp_layers: int = 0  # MTP layers the config declares (num_nextn_predict_layers)
    fp8_block: tuple[int, int] | None = None  # quantization_config.weight_block_size
    notes: list[str] = field(default_factory=list)  # lossless-but-noteworthy mapping choices


def _get(hf: dict, key: str):
    value = hf.get(key)
    return HF_DEFAULTS[hf["model_type"]].get(key) if value is None and key not in hf else value


def rope_settings(hf: dict) -> dict:
    """Normalise both spellings to {"type", "theta", and the rope dict's own keys}."""
    params = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    if "full_attention" in params and isinstance(params["full_attention"], dict):
        params = params["full_attention"]  # per-layer-type form; DeepSeek has one type
    rope_type = params.get("rope_type", params.get("type", "default"))
    theta = params.get("rope_theta", hf.get("rope_theta", _get(hf, "rope_theta")))
    return dict(params, type=rope_type, theta=float(theta))


def _apply_rope(m, hf: dict, problems: list[str], notes: list[str]):
    rope = rope_settings(hf)
    m.rope_theta = rope["theta"]
    if rope["type"] == "default":
        m.rope_scaling = "none"
        return
    if rope["type"] != "yarn":
        problems.append(f"rope type {rope['type']!r}: only 'default' and 'yarn' are supported")
        return
    if rope.get("truncate", True) is False:
        problems.append("rope_parameters.truncate = false: our YaRN always truncates the correction range")
    if rope.get("attention_factor") is not None:
        problems.append("rope_parameters.attention_factor: an explicit YaRN attention factor is not supported")
    original = rope.get("original_max_position_embeddings") or _get(hf, "max_position_embeddings")
    factor = rope.get("factor")
    if factor is None:  # transformers' rule for DeepSeek-style configs
        factor = _get(hf, "max_position_embeddings") / original
    mscale, mscale_all_dim = rope.get("mscale"), rope.get("mscale_all_dim")
    m.rope_scaling = "yarn"
    m.rope_factor = float(factor)
    m.rope_original_max_position = int(original)
    m.rope_beta_fast = float(rope.get("beta_fast") or 32)
    m.rope_beta_slow = float(rope.get("beta_slow") or 1)
    if mscale and mscale_all_dim:
        m.rope_mscale, m.rope_mscale_all_dim = float(mscale), float(mscale_all_dim)
    elif not mscale_all_dim:
        # transformers: cos/sin scale = mscale(factor) with mscale 1, whatever `mscale` says.
        m.rope_mscale, m.rope_mscale_all_dim = 1.0, 0.0
        if mscale not in (None, 1, 1.0):
            notes.append(f"rope mscale = {mscale} without mscale_all_dim is ignored, as transformers does")
    else:
        problems.append("rope mscale_all_dim set without mscale: transformers' attention factor "
                        "for this combination has no counterpart here")


def _apply_routing(m, hf: dict, model_type: str, problems: list[str], notes: list[str]):
    n_group, topk_group = _get(hf, "n_group"), _get(hf, "topk_group")
    scoring = hf.get("scoring_func")
    method = hf.get("topk_method")
    if model_type == "deepseek_v2":
        if scoring not in (None, "softmax"):
            problems.append(f"scoring_func {scoring!r}: DeepSeek-V2 routing is softmax")
        method = _get(hf, "topk_method")
        m.router, m.group_score = "softmax", "max"
        if method == "greedy":
            m.n_group, m.topk_group = 1, 1
        elif method == "group_limited_greedy":
            if not n_group or not topk_group:
                problems.append("topk_method 'group_limited_greedy' needs n_group and topk_group")
            else:
                m.n_group, m.topk_group = int(n_group), int(topk_group)
        else:
            problems.append(f"topk_method {method!r}: DeepSeek-V2 supports 'greedy' and 'group_limited_greedy'")
        if _get(hf, "norm_topk_prob"):
            notes.append("norm_topk_prob = true is ignored for DeepSeek-V2, as transformers does")
        m.norm_topk_prob = False
    else:
        if scoring not in (None, "sigmoid"):
            problems.append(f"scoring_func {scoring!r}: DeepSeek-V3 routing is sigmoid")
        if method not in (None, "noaux_tc"):
            problems.append(f"topk_method {method!r}: DeepSeek-V3 routing is 'noaux_tc'")
        m.router, m.group_score = "sigmoid_bias", "top2_sum"
        m.n_group, m.topk_group = int(n_group or 1), int(topk_group or 1)
        m.norm_topk_prob = bool(_get(hf, "norm_topk_prob"))
    m.routed_scaling = float(_get(hf, "routed_scaling_factor"))


def model_config_from_hf(hf: dict, param_dtype: str = "float32",
                         dtype: str | None = None) -> tuple[ml_collections.ConfigDict, HFLayout]:
    """config.json dict -> (our model ConfigDict, HFLayout). Raises UnsupportedCheckpointError."""
    model_type = hf.get("model_type")
    if model_type not in ARCHITECTURES:
        raise UnsupportedCheckpointError([
            f"model_type {model_type!r} (architectures {hf.get('architectures')}): supported "
            f"model types are {sorted(ARCHITECTURES)}"])
    problems, notes = [], []
    for key in ("attention_bias", "mlp_bias"):
        if hf.get(key):
            problems.append(f"{key} = true: our layers have no biases")
    if _get(hf, "hidden_act") != "silu":
        problems.append(f"hidden_act {_get(hf, 'hidden_act')!r}: only 'silu' (SwiGLU) is supported")
    if hf.get("moe_layer_freq", 1) != 1:
        problems.append(f"moe_layer_freq = {hf['moe_layer_freq']}: MoE must follow every dense-first layer")
    if not _get(hf, "n_routed_experts"):
        problems.append("n_routed_experts is missing or 0: only MoE models are supported")
    if not _get(hf, "num_experts_per_tok"):
        problems.append("num_experts_per_tok is missing")

    m = base_model_config()
    m.vocab_size = int(_get(hf, "vocab_size"))
    m.d_model = int(_get(hf, "hidden_size"))
    m.num_layers = int(_get(hf, "num_hidden_layers"))
    m.num_dense_layers = min(int(_get(hf, "first_k_dense_replace") or 0), m.num_layers)
    m.dense_ffn = int(_get(hf, "intermediate_size"))
    m.num_heads = int(_get(hf, "num_attention_heads"))
    m.q_lora_rank = int(_get(hf, "q_lora_rank") or 0)
    m.kv_lora_rank = int(_get(hf, "kv_lora_rank"))
    m.qk_nope_head_dim = int(_get(hf, "qk_nope_head_dim"))
    m.qk_rope_head_dim = int(_get(hf, "qk_rope_head_dim"))
    m.v_head_dim = int(_get(hf, "v_head_dim"))
    m.max_seq_len = int(_get(hf, "max_position_embeddings"))
    m.num_experts = int(_get(hf, "n_routed_experts") or 1)
    m.num_shared_experts = int(_get(hf, "n_shared_experts") or 0)
    m.expert_ffn = int(_get(hf, "moe_intermediate_size"))
    m.top_k = int(_get(hf, "num_experts_per_tok") or 1)
    m.tie_embeddings = bool(_get(hf, "tie_word_embeddings"))
    m.rms_eps = float(_get(hf, "rms_norm_eps"))
    m.init_std = float(_get(hf, "initializer_range"))
    m.mtp_depth = 0  # decided by the importer from the tensors present
    m.param_dtype = param_dtype
    m.dtype = dtype or param_dtype
    _apply_rope(m, hf, problems, notes)
    _apply_routing(m, hf, model_type, problems, notes)

    layout = HFLayout(model_type=model_type, notes=notes)
    if model_type == "deepseek_v3":
        layout.rope_interleaved = bool(_get(hf, "rope_interleave"))
        layout.mtp_layers = int(hf.get("num_nextn_predict_layers", hf.get("num_mtp_layers", 1)) or 0)
    quant = hf.get("quantization_config")
    if quant:
        if quant.get("quant_method") != "fp8" or quant.get("fmt", "e4m3") != "e4m3":
            problems.append(f"quantization_config {quant}: only block-scaled fp8 e4m3 is supported")
        layout.fp8_block = tuple(quant.get("weight_block_size") or (128, 128))
    if not problems:
        try:
            validate_model_config(m)
        except ConfigError as e:
            problems.append(f"maps to an invalid model config: {e}")
    if problems:
        raise UnsupportedCheckpointError(problems)
    for note in notes:
        log.warning("%s", note)
    return m, layout


def _rope_to_hf(m, cfg: dict, base: dict):
    """Write rope settings in the base config's spelling (keeping its extra keys), else
    as published: rope_theta + rope_scaling {"type": "yarn", ...}."""
    old = dict((base.get("rope_parameters") or base.get("rope_scaling") or {}) if base else {})
    old_type = rope_settings(base)["type"] if base else None
    theta = int(m.rope_theta) if float(m.rope_theta).is_integer() else float(m.rope_theta)
    rope = None
    if m.rope_scaling == "yarn":
        rope = dict(old if old_type == "yarn" else {})
        rope.update(factor=float(m.rope_factor), original_max_position_embeddings=int(m.rope_original_max_position),
                    beta_fast=m.rope_beta_fast, beta_slow=m.rope_beta_slow)
        if all(float(v).is_integer() for v in (m.rope_beta_fast, m.rope_beta_slow)):
            rope.update(beta_fast=int(m.rope_beta_fast), beta_slow=int(m.rope_beta_slow))
        if m.rope_mscale_all_dim:
            rope.update(mscale=m.rope_mscale, mscale_all_dim=m.rope_mscale_all_dim)
        else:  # transformers then ignores mscale: keep what the source said
            if m.rope_mscale != 1.0:
                log.warning("model.rope_mscale = %s without rope_mscale_all_dim: transformers ignores it",
                            m.rope_mscale)
            rope.setdefault("mscale", m.rope_mscale)
            rope["mscale_all_dim"] = rope.get("mscale_all_dim") or 0
    if base.get("rope_parameters"):
        params = rope if rope is not None else dict(old if old_type == "default" else {})
        params.pop("type", None)
        cfg["rope_parameters"] = dict(params, rope_type="yarn" if rope else "default", rope_theta=theta)
        cfg.pop("rope_scaling", None)
        cfg.pop("rope_theta", None)
        return
    if rope is not None:
        if "type" in rope or "rope_type" not in rope:
            rope["type"] = "yarn"
        if "rope_type" in rope:
            rope["rope_type"] = "yarn"
    cfg["rope_scaling"] = rope
    cfg["rope_theta"] = theta
    cfg.pop("rope_parameters", None)


def hf_config_from_model(m, base: dict | None = None, torch_dtype: str = "bfloat16",
                         quantized: bool = False) -> dict:
    """Our model ConfigDict -> config.json dict, updating `base` (the imported config) if given.

    A softmax router is written as DeepSeek-V2, sigmoid routers as DeepSeek-V3.
    """
    model_type = "deepseek_v2" if m.router == "softmax" else "deepseek_v3"
    problems = []
    if model_type == "deepseek_v2" and m.n_group > 1 and m.group_score != "max":
        problems.append(f"model.group_score = {m.group_score!r} with a softmax router: DeepSeek-V2 scores groups by 'max'")
    if model_type == "deepseek_v3" and m.n_group > 1 and m.group_score != "top2_sum":
        problems.append(f"model.group_score = {m.group_score!r} with a sigmoid router: DeepSeek-V3 scores groups by 'top2_sum'")
    if problems:
        raise UnsupportedCheckpointError(problems)
    base = dict(base or {})
    if base and base.get("model_type") != model_type:
        log.warning("base config is %s but the model is %s: not reusing it", base.get("model_type"), model_type)
        base = {}
    cfg = dict(base)
    cfg.update(
        architectures=[ARCHITECTURES[model_type]], model_type=model_type,
        vocab_size=m.vocab_size, hidden_size=m.d_model, intermediate_size=m.dense_ffn,
        moe_intermediate_size=m.expert_ffn, num_hidden_layers=m.num_layers,
        num_attention_heads=m.num_heads, num_key_value_heads=m.num_heads,
        n_shared_experts=m.num_shared_experts, n_routed_experts=m.num_experts,
        routed_scaling_factor=m.routed_scaling, kv_lora_rank=m.kv_lora_rank,
        q_lora_rank=m.q_lora_rank or None, qk_rope_head_dim=m.qk_rope_head_dim,
        qk_nope_head_dim=m.qk_nope_head_dim, v_head_dim=m.v_head_dim,
        num_experts_per_tok=m.top_k,
        first_k_dense_replace=m.num_dense_layers, hidden_act="silu",
        max_position_embeddings=m.max_seq_len, initializer_range=m.init_std,
        rms_norm_eps=m.rms_eps, tie_word_embeddings=bool(m.tie_embeddings), attention_bias=False)
    if model_type == "deepseek_v2" and m.n_group == 1 and "n_group" in base:
        pass  # greedy V2 ignores the group fields: keep what the imported config said (often null)
    else:
        cfg.update(n_group=m.n_group, topk_group=m.topk_group)
    if model_type == "deepseek_v2":
        cfg["topk_method"] = "greedy" if m.n_group == 1 else "group_limited_greedy"
        if m.norm_topk_prob:
            log.warning("model.norm_topk_prob = True with a softmax router: transformers' "
                        "DeepseekV2 ignores it, so its outputs will differ")
            cfg["norm_topk_prob"] = True
        else:
            cfg.setdefault("norm_topk_prob", False)
    else:
        cfg["norm_topk_prob"] = bool(m.norm_topk_prob)
        if not base:  # as published; transformers-written configs leave these out
            cfg.update(topk_method="noaux_tc", scoring_func="sigmoid", rope_interleave=True)
        if m.mtp_depth or not base:
            # A V3 config declares MTP layers even where transformers saved none: keep it.
            cfg["num_nextn_predict_layers"] = m.mtp_depth
        if m.top_k == 1 and m.norm_topk_prob:
            log.warning("top_k = 1 with norm_topk_prob: transformers renormalises the single weight to 1, "
                        "our router keeps the raw score")
    _rope_to_hf(m, cfg, base)
    dtype_key = "dtype" if "dtype" in base else "torch_dtype"  # transformers >= 5 writes "dtype"
    cfg[dtype_key] = torch_dtype
    if quantized:
        cfg["quantization_config"] = dict(QUANTIZATION_CONFIG)
    else:
        cfg.pop("quantization_config", None)
    return cfg

