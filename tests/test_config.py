import pytest

from moe_jax.config import apply_override, load_config
from moe_jax.models.config import ConfigError


@pytest.mark.parametrize("override, field", [
    ("model.top_k=17", "model.top_k"),  # more experts per token than experts (16)
    ("model.n_group=3", "model.n_group"),  # 16 experts do not split into 3 groups
    ("model.topk_group=5", "model.topk_group"),  # more groups kept than exist (4)
    ("model.router=magic", "model.router"),
    ("model.qk_rope_head_dim=15", "model.qk_rope_head_dim"),  # rope rotates pairs
    ("model.v_head_dim=0", "model.v_head_dim"),
    ("model.num_dense_layers=9", "model.num_dense_layers"),  # more than num_layers = 4
    ("model.dispatch=fast", "model.dispatch"),
    ("model.capacity_factor=0.0", "model.capacity_factor"),
    ("model.dtype=float8", "model.dtype"),
    ("model.remat_policy=some", "model.remat_policy"),
    ("model.top_k=abc", "model.top_k"),  # wrong type
    ("model.num_expert=8", "model.num_expert"),  # misspelt field
])
def test_bad_configs_fail_naming_the_field(override, field):
    with pytest.raises(ConfigError) as info:
        load_config("configs/tiny.py", [override])
    assert f"`{field}`" in str(info.value)
    assert "expected" in str(info.value)


def test_group_too_small_for_top_k():
    # 4 groups of 4 experts keeping 1 group cannot supply top_k = 5 experts.
    with pytest.raises(ConfigError, match="model.topk_group"):
        load_config("configs/tiny.py", ["model.topk_group=1", "model.top_k=5"])


def test_overrides_parse_to_the_field_type():
    config = load_config("configs/tiny.py", ["model.num_experts=32", "model.capacity_factor=2",
                                             "model.router=softmax", "model.tie_embeddings=true"])
    assert config.model.num_experts == 32
    assert config.model.capacity_factor == 2.0 and isinstance(config.model.capacity_factor, float)
    assert config.model.router == "softmax"
    assert config.model.tie_embeddings is True


def test_an_override_may_spell_its_field_with_the_config_prefix():
    config = load_config("configs/tiny.py", ["config.model.num_experts=32", "config.model.router=softmax"])
    assert (config.model.num_experts, config.model.router) == (32, "softmax")
    with pytest.raises(ConfigError, match="model.num_expert"):
        load_config("configs/tiny.py", ["config.model.num_expert=32"])


def test_override_needs_an_equals_sign():
    config = load_config("configs/tiny.py")
    with pytest.raises(ValueError, match="FIELD=VALUE"):
        apply_override(config, "model.top_k")


@pytest.mark.parametrize("path", ["configs/tiny.py", "configs/deepseek_v2_lite.py", "configs/deepseek_v3.py"])
def test_presets_validate(path):
    assert load_config(path).model.num_layers > 0
