"""Random tiny DeepSeek-V2/V3 models built in transformers, saved as sharded safetensors."""

from __future__ import annotations

import functools
import json
import os

import jax
import ml_collections
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from safetensors import safe_open  # noqa: E402

from moe_jax.models.transformer import Transformer  # noqa: E402

YARN = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 32,
        "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0}
_BASE = dict(vocab_size=96, hidden_size=32, intermediate_size=48, moe_intermediate_size=16,
             num_attention_heads=2, num_key_value_heads=2, kv_lora_rank=16, qk_rope_head_dim=8,
             v_head_dim=8, qk_nope_head_dim=8, max_position_embeddings=128, initializer_range=0.1,
             rms_norm_eps=1e-6)

# name -> (architecture, config overrides). Together they cover: group-limited routing
# (V2 "max", V3 "top2_sum"), no q low-rank, YaRN (both mscale forms), plain rope, rope
# halves layout, dense first layers, all-MoE, tied and untied heads, routed scaling.
CONFIGS = {
    "v3_group_yarn": ("deepseek_v3", dict(
        num_hidden_layers=3, first_k_dense_replace=1, q_lora_rank=24, n_routed_experts=4,
        n_shared_experts=1, num_experts_per_tok=2, n_group=2, topk_group=1, routed_scaling_factor=2.5,
        norm_topk_prob=True, rope_parameters=YARN, tie_word_embeddings=False)),
    "v3_plain_tied": ("deepseek_v3", dict(
        num_hidden_layers=2, first_k_dense_replace=0, q_lora_rank=None, n_routed_experts=6,
        n_shared_experts=2, num_experts_per_tok=3, n_group=1, topk_group=1, routed_scaling_factor=1.7,
        norm_topk_prob=False, rope_parameters={"rope_type": "default", "rope_theta": 500.0},
        rope_interleave=False, tie_word_embeddings=True)),
    "v2_lite": ("deepseek_v2", dict(
        num_hidden_layers=3, first_k_dense_replace=1, q_lora_rank=None, n_routed_experts=8,
        n_shared_experts=2, num_experts_per_tok=3, topk_method="greedy", routed_scaling_factor=1.0,
        rope_parameters=dict(YARN, mscale=0.707, mscale_all_dim=0.707), tie_word_embeddings=False)),
    "v2_group_tied": ("deepseek_v2", dict(
        num_hidden_layers=2, first_k_dense_replace=1, q_lora_rank=24, n_routed_experts=8,
        n_shared_experts=1, num_experts_per_tok=3, topk_method="group_limited_greedy", n_group=4,
        topk_group=2, routed_scaling_factor=1.5, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=True)),
}


def build_hf_model(name: str, seed: int = 0, **overrides):
    """A random transformers model; V3 routers get random nonzero correction biases."""
    arch, kwargs = CONFIGS[name]
    torch.manual_seed(seed)
    if arch == "deepseek_v3":
        config = transformers.DeepseekV3Config(**{**_BASE, **kwargs, **overrides})
        model = transformers.DeepseekV3ForCausalLM(config)
        with torch.no_grad():
            for layer in model.model.layers[config.first_k_dense_replace:]:
                bias = layer.mlp.gate.e_score_correction_bias
                bias.copy_(torch.randn(bias.shape) * 0.1)
    else:
        config = transformers.DeepseekV2Config(**{**_BASE, **kwargs, **overrides})
        model = transformers.DeepseekV2ForCausalLM(config)
    model.generation_config.eos_token_id = None  # always 20 new tokens
    return model.eval()


def save_hf_model(model, directory: str, max_shard_size: str = "20KB", dtype=None) -> str:
    if dtype is not None:  # router correction biases stay float32, as DeepSeek ships them
        model = model.to(dtype)
        for module in model.modules():
            if hasattr(module, "e_score_correction_bias"):
                module.e_score_correction_bias.data = module.e_score_correction_bias.data.float()
    model.save_pretrained(directory, max_shard_size=max_shard_size)
    return directory


def read_all_tensors(directory: str) -> dict[str, np.ndarray]:
    """Every tensor of a checkpoint directory as numpy (float8 read through torch)."""
    out = {}
    for file in sorted(os.listdir(directory)):
        if file.endswith(".safetensors"):
            with safe_open(os.path.join(directory, file), "pt") as f:
                for key in f.keys():
                    t = f.get_tensor(key)
                    out[key] = t.view(torch.uint8).numpy() if t.dtype == torch.float8_e4m3fn else \
                        t.view(torch.int16).numpy() if t.dtype == torch.bfloat16 else t.numpy()
    return out


def hf_logits(model, tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor(tokens)).logits.float().numpy()


def hf_greedy(model, prompt: np.ndarray, new_tokens: int = 20) -> np.ndarray:
    with torch.no_grad():
        out = model.generate(torch.tensor(prompt), max_new_tokens=new_tokens, do_sample=False)
    return out[:, prompt.shape[1]:].numpy()


def no_drop(model_config):
    """Capacity dispatch with enough slots that no token is ever dropped (C = S)."""
    model_config.dispatch = "capacity"
    model_config.capacity_factor = model_config.num_experts / model_config.top_k
    return model_config


def our_forward(model_config):
    """Jitted tokens -> logits, one per distinct config (tests share compiles)."""
    return _jitted_forward(json.dumps(model_config.to_dict(), sort_keys=True))


@functools.lru_cache(maxsize=None)
def _jitted_forward(config_json: str):
    model = Transformer.from_config(ml_collections.ConfigDict(json.loads(config_json)))
    return jax.jit(lambda variables, tokens: model.apply(variables, tokens)[0])


def our_greedy(model_config, variables, prompt: np.ndarray, new_tokens: int = 20) -> np.ndarray:
    """Re-run the full forward on the growing sequence (one fixed length, so one compile:
    causal attention and drop-free dispatch make position t independent of later tokens)."""
    forward = our_forward(model_config)
    batch, length = prompt.shape
    tokens = np.zeros((batch, length + new_tokens), np.int32)
    tokens[:, :length] = prompt
    for t in range(length, length + new_tokens):
        logits = np.asarray(forward(variables, tokens))
        tokens[:, t] = logits[:, t - 1].argmax(-1)
    return tokens[:, length:]


def rewrite_config(directory: str, **changes):
    path = os.path.join(directory, "config.json")
    with open(path) as f:
        cfg = json.load(f)
    for key, value in changes.items():
        if value is None:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    with open(path, "w") as f:
        json.dump(cfg, f)
    return cfg
