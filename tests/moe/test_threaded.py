"""The threaded CPU kernel: the same numbers as the reference and the XLA kernel,
gradients included, whatever the thread count; and the dropless engine picks it only
where a host callback can run (one device, or per device in shard_map, not exported)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType

from moe_jax.moe import dispatch, dropless, ragged_kernels, threaded

S, D, E, K, F = 64, 32, 8, 2, 16
EMPTY = 3  # an expert no token picks

pytestmark = pytest.mark.skipif(not threaded.available(), reason="needs jax buffer callbacks")


def make_inputs(dtype=jnp.float32, drop_every=None):
    k = jax.random.split(jax.random.PRNGKey(1), 5)
    x = jax.random.normal(k[0], (S, D))
    logits = jax.random.normal(k[1], (S, E)).at[:, EMPTY].add(-100.0)
    combine_weights, expert_index = jax.lax.top_k(jax.nn.softmax(logits), K)
    if drop_every:  # the capacity engine's marker: expert E = no row
        expert_index = expert_index.at[::drop_every, 1].set(E)
    experts = dispatch.ExpertWeights(jax.random.normal(k[2], (E, D, F)) / D**0.5,
                                     jax.random.normal(k[3], (E, D, F)) / D**0.5,
                                     jax.random.normal(k[4], (E, F, D)) / F**0.5)
    cast = lambda a: a.astype(dtype)  # noqa: E731
    return cast(x), expert_index, combine_weights, jax.tree.map(cast, experts)


def value_and_grads(engine, x, expert_index, combine_weights, experts):
    def loss(x, combine_weights, experts):
        y, _ = engine(x, expert_index, combine_weights, experts, None)
        return jnp.sum(jnp.sin(y.astype(jnp.float32)))  # a non-uniform dy

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(x, combine_weights, experts)


def threaded_engine(*args):
    return dropless.dropless(*args, implementation="threaded")


def tiled_engine(*args):
    return dropless.dropless(*args, implementation="tiled")


def assert_trees_close(a, b, rtol, atol):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(u, np.float32), np.asarray(v, np.float32), rtol=rtol, atol=atol)


def test_matches_reference_with_gradients():
    inputs = make_inputs()
    got = value_and_grads(threaded_engine, *inputs)
    want = value_and_grads(dispatch.reference, *inputs)
    assert_trees_close(got, want, rtol=1e-5, atol=1e-5)
    d_gate = got[1][2].gate
    assert float(jnp.max(jnp.abs(d_gate[EMPTY]))) == 0.0  # no rows, no gradient
    assert float(jnp.max(jnp.abs(d_gate[EMPTY + 1]))) > 0.0


def test_assignments_without_a_row_read_as_zeros_call_after_call():
    # Two calls with different dropped sets: rows that belong to no expert must come back
    # as zero gradients, not as what a previous call left in the reused buffers.
    for drop_every in (3, 7):
        inputs = make_inputs(drop_every=drop_every)
        assert_trees_close(value_and_grads(threaded_engine, *inputs),
                           value_and_grads(tiled_engine, *inputs), rtol=1e-5, atol=1e-5)


def test_results_do_not_depend_on_the_thread_count(monkeypatch):
    inputs = make_inputs()
    step = jax.jit(jax.value_and_grad(
        lambda x, cw, ew: jnp.sum(jnp.sin(threaded_engine(x, inputs[1], cw, ew, None)[0])),
        argnums=(0, 1, 2)))
    results = []
    for count in (1, 3):  # the partition is made per call, from num_threads()
        monkeypatch.setattr(threaded, "num_threads", lambda count=count: count)
        results.append(step(inputs[0], inputs[2], inputs[3]))
    for u, v in zip(jax.tree.leaves(results[0]), jax.tree.leaves(results[1])):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


def test_bfloat16_is_computed_in_float32():
    inputs = make_inputs(jnp.bfloat16)
    got = value_and_grads(threaded_engine, *inputs)
    # The reference in float32 on the same (bfloat16-valued) numbers: only the rounding of
    # the outputs and gradients to bfloat16 separates the two.
    want = value_and_grads(dispatch.reference, *jax.tree.map(lambda a: a.astype(jnp.float32)
                                                             if a.dtype == jnp.bfloat16 else a, inputs))
    assert got[1][0].dtype == jnp.bfloat16 and got[1][2].down.dtype == jnp.bfloat16
    assert_trees_close(got, want, rtol=2e-2, atol=2e-2)


def test_vmap_runs_each_example():
    x, expert_index, combine_weights, experts = make_inputs()
    xs = jnp.stack([x, 2.0 * x])
    batched = jax.vmap(lambda x: threaded_engine(x, expert_index, combine_weights, experts, None)[0])(xs)
    for i in range(2):
        one = threaded_engine(xs[i], expert_index, combine_weights, experts, None)[0]
        np.testing.assert_allclose(batched[i], one, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------------------
# Where the dropless engine picks it.
# ----------------------------------------------------------------------------------------

BIG = (threaded.MIN_WORK // (512 * 256), 512, 256)  # rows, D, F: just enough work


@pytest.fixture
def two_cores(monkeypatch):
    monkeypatch.setattr(threaded, "num_threads", lambda: 2)


def test_picked_for_big_layers_on_one_device(two_cores):
    one_device = jax.make_mesh((1,), ("data",), axis_types=(AxisType.Explicit,), devices=jax.devices()[:1])
    with jax.set_mesh(one_device):
        assert dropless.default_implementation(*BIG) == "threaded"
        assert dropless.default_implementation(BIG[0] // 2, *BIG[1:]) == "tiled"  # too small
        assert dropless.default_implementation(*BIG, fp8=True) == "tiled"  # no fp8 GEMMs
        with ragged_kernels.portable():  # for jax.export
            assert dropless.default_implementation(*BIG) == "tiled"


def test_one_core_keeps_the_xla_kernel(monkeypatch):
    monkeypatch.setattr(threaded, "num_threads", lambda: 1)
    one_device = jax.make_mesh((1,), ("data",), axis_types=(AxisType.Explicit,), devices=jax.devices()[:1])
    with jax.set_mesh(one_device):
        assert dropless.default_implementation(*BIG) == "tiled"


def test_not_picked_where_jit_partitions_the_layer(two_cores):
    assert jax.device_count() == 8  # tests/conftest.py
    assert dropless.default_implementation(*BIG) == "tiled"  # no mesh, 8 devices
    mesh = jax.make_mesh((2, 4), ("data", "expert"), axis_types=(AxisType.Explicit,) * 2)
    seen = {}

    def body(x):
        seen["inside"] = dropless.default_implementation(*BIG)
        return x

    with jax.set_mesh(mesh):
        assert dropless.default_implementation(*BIG) == "tiled"
        jax.jit(jax.shard_map(body, in_specs=jax.P(), out_specs=jax.P()))(jnp.ones(8))
    assert seen["inside"] == "threaded"  # per device, every axis manual


def test_exported_programs_carry_no_callback(two_cores, monkeypatch):
    monkeypatch.setattr(threaded, "MIN_WORK", 1)  # the test's layer counts as big
    x, expert_index, combine_weights, experts = make_inputs()

    def layer():  # a new function each time: a jitted function keeps its first trace
        return jax.jit(lambda x: dropless.dropless(x, expert_index, combine_weights, experts)[0])

    one_device = jax.make_mesh((1,), ("data",), axis_types=(AxisType.Explicit,), devices=jax.devices()[:1])
    with jax.set_mesh(one_device):
        assert "python_cpu_callback" in layer().lower(x).as_text()
        with ragged_kernels.portable():
            exported = jax.export.export(layer())(x)
    assert "python_cpu_callback" not in exported.mlir_module()
