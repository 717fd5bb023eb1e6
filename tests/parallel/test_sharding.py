"""Logical rules -> shardings of params, optimizer state and batches; multi-host settings."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from helpers import lm_batch, tiny_model_config
from moe_jax.models.transformer import Transformer
from moe_jax.parallel import distributed, sharding
from moe_jax.parallel.mesh import make_mesh
from moe_jax.train.optimizer import default_optimizer_config, make_optimizer
from moe_jax.train.state import create_train_state

SIZES = {"data": 1, "fsdp": 2, "expert": 4, "tensor": 1}


@pytest.fixture(scope="module")
def specs():
    model = Transformer.from_config(tiny_model_config())
    optimizer = make_optimizer(default_optimizer_config())
    abstract = jax.eval_shape(lambda rng: create_train_state(model, optimizer, rng, 16), jax.random.PRNGKey(0))
    return abstract, sharding.state_specs(abstract, sharding.abstract_boxed_params(model), SIZES)


def test_param_specs_follow_the_rules(specs):
    _, s = specs
    moe = s.params["moe_layers"]["moe"]
    # [layers, E, D, F]: experts over expert, D over fsdp (expert is taken), F over tensor.
    assert moe["wi_gate"] == P(None, "expert", "fsdp", "tensor")
    assert moe["wo"] == P(None, "expert", "tensor", "fsdp")
    # Every device routes its own tokens over all experts: the gate's E is never split.
    assert moe["router"]["gate"] == P(None, ("fsdp", "expert"))
    # Non-expert matrices: ZeRO-3 over fsdp * expert on their model dimension.
    assert s.params["embed"]["embedding"] == P("tensor", ("fsdp", "expert"))
    assert s.params["moe_layers"]["attn"]["kv_b"] == P(None, ("fsdp", "expert"), "tensor")
    assert s.params["final_norm"]["scale"] == P()
    assert jax.tree.leaves(s.router_bias, is_leaf=lambda x: isinstance(x, P)) == [P(), P()]  # [layers, E]
    assert s.step == P()


def test_optimizer_state_mirrors_the_params(specs):
    abstract, s = specs
    leaves = jax.tree_util.tree_leaves_with_path(s.opt_state, is_leaf=lambda x: isinstance(x, P))
    by_path = {jax.tree_util.keystr(p): spec for p, spec in leaves}
    mu = [v for k, v in by_path.items() if ".mu" in k and "wi_gate" in k and "moe_layers" in k]
    assert mu == [P(None, "expert", "fsdp", "tensor")]
    assert all(v == P() for k, v in by_path.items() if k.endswith(".count"))
    # Same tree structure as the state itself.
    assert jax.tree.structure(abstract.opt_state) == jax.tree.structure(
        s.opt_state, is_leaf=lambda x: isinstance(x, P))


def test_undivisible_dims_fall_back_to_fewer_axes():
    sizes = {"data": 1, "fsdp": 2, "expert": 4, "tensor": 3}
    assert sharding.logical_to_mesh_spec(("vocab", "embed"), (128, 192), sizes) == P(None, ("fsdp", "expert"))
    assert sharding.logical_to_mesh_spec(("embed",), (6,), sizes) == P("fsdp")


def test_batch_and_host_arrays_are_placed_on_the_mesh():
    mesh = make_mesh(SIZES)
    batch = lm_batch(np.arange(8 * 5).reshape(8, 5) % 7)
    placed = sharding.shard_batch(batch, mesh)
    assert placed["inputs"].sharding.spec == P(("data", "fsdp", "expert"))
    assert placed["inputs"].addressable_shards[0].data.shape == (1, 4)
    np.testing.assert_array_equal(np.asarray(placed["targets"]), batch["targets"])
    # Process-local rows: on one process the local rows are the global batch.
    local = sharding.shard_batch(batch, mesh, process_local=True)
    np.testing.assert_array_equal(np.asarray(local["inputs"]), batch["inputs"])


def test_distributed_settings_from_args_then_env(monkeypatch):
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.resolve_settings() == (None, 1, 0)
    assert distributed.initialize_distributed() is False  # one process: nothing to join
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "127.0.0.1:1234")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    monkeypatch.setenv("JAX_PROCESS_ID", "1")
    assert distributed.resolve_settings() == ("127.0.0.1:1234", 2, 1)
    assert distributed.resolve_settings(process_id=0).process_id == 0
    monkeypatch.delenv("JAX_PROCESS_ID")
    with pytest.raises(ValueError, match="process_id"):
        distributed.resolve_settings()
