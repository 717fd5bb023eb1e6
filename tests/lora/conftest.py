import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from helpers import tiny_model_config
from moe_jax.models.transformer import Transformer
from moe_jax.moe.router import BIAS_COLLECTION


def small_tiny_config():
    """configs/tiny.py cut to 2 narrow layers (1 dense + 1 MoE) that keep its q low-rank,
    shared + routed experts and MTP module, so every adapter target is present."""
    return tiny_model_config(num_layers=2, num_dense_layers=1, d_model=64, dense_ffn=128,
                             q_lora_rank=32, kv_lora_rank=32, num_experts=4, top_k=2,
                             n_group=1, topk_group=1, expert_ffn=64)


@pytest.fixture(scope="session")
def tiny():
    m = small_tiny_config()
    model = Transformer.from_config(m)
    variables = nn.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 16), jnp.int32)))
    return m, model, variables["params"], variables.get(BIAS_COLLECTION, {})
