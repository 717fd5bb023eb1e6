"""One tiny model shared by the inference tests: compiling is what costs time here."""

import jax
import jax.numpy as jnp
import pytest
from flax import linen as nn

from moe_jax.config import load_config
from moe_jax.infer.generate import inference_config
from moe_jax.models.transformer import Transformer

# configs/tiny.py (vocab 128 >= the char tokenizer's 99, one MTP module) made smaller.
TINY_OVERRIDES = (
    "model.d_model=32", "model.num_layers=2", "model.dense_ffn=64", "model.num_heads=2",
    "model.q_lora_rank=16", "model.kv_lora_rank=16", "model.qk_nope_head_dim=8",
    "model.qk_rope_head_dim=4", "model.v_head_dim=8", "model.num_experts=4",
    "model.expert_ffn=16", "model.top_k=2", "model.n_group=1", "model.topk_group=1")


@pytest.fixture(scope="session")
def tiny_model():
    """-> dict(m: inference config, model, params, router_bias, overrides)."""
    m = inference_config(load_config("configs/tiny.py", list(TINY_OVERRIDES)).model)
    model = Transformer.from_config(m)
    variables = nn.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32)))
    return dict(m=m, model=model, params=variables["params"],
                router_bias=variables["router_bias"], overrides=TINY_OVERRIDES)
