"""Dropless dispatch equals the reference loop over experts: outputs and every gradient.
The last section checks which grouped-matmul kernel the engine picks (ragged_kernels)."""

import functools
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import random_experts

from moe_jax.moe import dispatch, dropless, ragged_kernels

# S = 37 tokens: not a multiple of any tile, so every expert's block ends in padding.
NUM_TOKENS, D_MODEL, NUM_EXPERTS, FFN = 37, 16, 8, 12


def make_problem(routing, top_k, dtype=jnp.float32, seed=0):
    keys = jax.random.split(jax.random.PRNGKey(seed), 6)
    x = jax.random.normal(keys[0], (NUM_TOKENS, D_MODEL))
    experts = random_experts(keys[1:4], NUM_EXPERTS, D_MODEL, FFN)
    logits = jax.random.normal(keys[4], (NUM_TOKENS, NUM_EXPERTS))
    if routing == "all_to_one":  # every token's first choice is expert 5
        logits = logits.at[:, 5].set(100.0)
    elif routing == "half_empty":  # experts 4..7 get nothing; 0..3 share everything
        logits = logits.at[:, 4:].set(-100.0)
    weights, index = jax.lax.top_k(jax.nn.softmax(logits), top_k)
    # A fixed random cotangent: the gradient of sum(y) alone would be a broadcast of ones,
    # which cannot tell a row from its neighbour.
    cotangent = jax.random.normal(keys[5], (NUM_TOKENS, D_MODEL))
    cast = lambda a: a.astype(dtype)  # noqa: E731
    return cast(x), index.astype(jnp.int32), weights, jax.tree.map(cast, experts), cotangent


@functools.lru_cache(maxsize=None)
def _jitted_value_and_grads(engine):
    # One jitted function per engine, routing passed as arguments: problems of the same
    # shapes share one compilation, which is most of this file's run time.
    def loss(x, weights, experts, index, cotangent):
        y, num_dropped = engine(x, index, weights, experts, None)
        return jnp.sum(y.astype(jnp.float32) * cotangent), (y, num_dropped)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))


def value_and_grads(engine, x, index, weights, experts, cotangent):
    """y, num_dropped and the gradients of <y, cotangent> w.r.t. x, combine weights and all
    expert weights, under jit."""
    (_, (y, num_dropped)), grads = _jitted_value_and_grads(engine)(x, weights, experts, index, cotangent)
    return y, num_dropped, grads


def assert_close_tree(actual, expected, tol):
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(e, np.float32), rtol=tol, atol=tol)


@functools.lru_cache(maxsize=None)
def reference_results(routing, top_k, dtype=jnp.float32):
    """Reference outputs and gradients, computed once per problem and shared by the tests."""
    return value_and_grads(dispatch.reference, *make_problem(routing, top_k, dtype))


IMPLEMENTATIONS = {
    # Small tiles so that the tiny problem takes every path of the CPU kernel: with all
    # tokens on one expert, its 37 rows (block of 40) run as five full tiles of 8; other
    # experts have rest tiles of 4.
    "tiled": functools.partial(dropless.dropless, implementation="tiled", max_tile=8, align=4),
    # max_tile == align: only full tiles, never a rest tile.
    "tiled_one_size": functools.partial(dropless.dropless, implementation="tiled", max_tile=4, align=4),
    # ragged_dot is the GPU/TPU path; on CPU it runs (slowly), so the tiny case proves it.
    "ragged_dot": functools.partial(dropless.dropless, implementation="ragged_dot"),
}


ROUTINGS = [("random", 2), ("random", 1), ("random", 6), ("all_to_one", 2), ("half_empty", 2)]
CASES = ([("tiled", *r) for r in ROUTINGS]
         # The accelerator path on the two hardest routings; full tiles only on the one
         # that has more than one.
         + [("ragged_dot", *r) for r in ROUTINGS[3:]] + [("tiled_one_size", "all_to_one", 2)])


@pytest.mark.parametrize("implementation,routing,top_k", CASES)
def test_equals_reference_float32(implementation, routing, top_k):
    y_ref, _, grads_ref = reference_results(routing, top_k)
    y, num_dropped, grads = value_and_grads(IMPLEMENTATIONS[implementation], *make_problem(routing, top_k))
    assert int(num_dropped) == 0
    assert y.dtype == jnp.float32
    assert_close_tree(y, y_ref, 1e-5)
    assert_close_tree(grads, grads_ref, 1e-5)


def test_forward_only_equals_reference():
    # Without differentiation the CPU kernel keeps no pre-activations: its own code path.
    x, index, weights, experts, _ = make_problem("all_to_one", 2)
    y_ref, _ = jax.jit(dispatch.reference)(x, index, weights, experts)
    y, num_dropped = jax.jit(IMPLEMENTATIONS["tiled"])(x, index, weights, experts)
    assert int(num_dropped) == 0
    assert_close_tree(y, y_ref, 1e-5)


@pytest.mark.parametrize("implementation", ["tiled", "ragged_dot"])
def test_equals_reference_bfloat16(implementation):
    y_ref, _, grads_ref = reference_results("random", 2, jnp.bfloat16)
    y, _, grads = value_and_grads(IMPLEMENTATIONS[implementation], *make_problem("random", 2, jnp.bfloat16))
    assert y.dtype == jnp.bfloat16
    assert all(g.dtype == r.dtype for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref)))
    # bfloat16 keeps 8 bits of mantissa (relative step 2^-8 = 0.4%); the two engines round
    # at different places and sum in different orders, so allow a few steps on O(1) values.
    assert_close_tree(y, y_ref, 5e-2)
    assert_close_tree(grads, grads_ref, 1e-1)


def test_gradient_of_plain_sum_with_default_tiling():
    # The benchmark's loss: dy is a broadcast, which the CPU kernel must not mishandle.
    # The engine as registered, so with the default tiling: N / E = 74 / 8 -> (16, 8).
    x, index, weights, experts, _ = make_problem("random", 2)
    ones = jnp.ones((NUM_TOKENS, D_MODEL))
    _, _, grads_ref = value_and_grads(dispatch.reference, x, index, weights, experts, ones)
    _, _, grads = value_and_grads(dispatch.get_engine("dropless"), x, index, weights, experts, ones)
    assert_close_tree(grads, grads_ref, 1e-5)


def test_cpu_tiling():
    # Benchmark shape: N / E = 4096 * 6 / 64 = 384; target 1.25 * 384 = 480 > 8 * 16 and
    # > 16 * 16, but <= 32 * 16 = 512: align 32, max_tile = 480 (15 tile sizes).
    assert dropless.cpu_tiling(4096 * 6, 64) == (480, 32)
    # Decoding 8 tokens: N / E = 48 / 64 < 1: the smallest tiling, no rest sizes at all.
    assert dropless.cpu_tiling(48, 64) == (8, 8)
    # N / E = 1024: target 1280 > 64 * 16, align stops at 64; max_tile capped at 512.
    assert dropless.cpu_tiling(1024 * 256, 256) == (512, 64)


def test_is_registered_and_cpu_default_is_tiled():
    assert dispatch.get_engine("dropless") is dropless.dropless
    assert dropless.default_implementation() == ("tiled" if jax.default_backend() == "cpu" else "ragged_dot")


def test_sorted_layout():
    # 4 tokens, K = 2, E = 3, blocks aligned to 4 rows. Flat assignments n = s K + k:
    #   expert_index = [[2, 0], [0, 2], [2, 1], [0, 2]]  ->  experts of n = 0..7:
    #   2 0 0 2 2 1 0 2. Expert 0 gets n = 1, 2, 6 (3 rows, block of 4 at row 0);
    #   expert 1 gets n = 5 (block of 4 at row 4); expert 2 gets n = 0, 3, 4, 7 (block of
    #   4 at row 8). R = (8 + 3 * (4 - 1)) // 4 * 4 = 16 rows.
    index = jnp.array([[2, 0], [0, 2], [2, 1], [0, 2]], jnp.int32)
    layout = dropless.sort_by_expert(index, 3, align=4)
    np.testing.assert_array_equal(layout.group_sizes, [3, 1, 4])
    np.testing.assert_array_equal(layout.block_start, [0, 4, 8])
    np.testing.assert_array_equal(layout.block_rows, [4, 4, 4])
    np.testing.assert_array_equal(layout.assignment_row, [[8, 0], [1, 9], [10, 4], [2, 11]])
    pad = 8  # N: padding rows point past the last assignment
    np.testing.assert_array_equal(layout.row_assignment,
                                  [1, 2, 6, pad, 5, pad, pad, pad, 0, 3, 4, 7, pad, pad, pad, pad])
    np.testing.assert_array_equal(layout.row_token,
                                  [0, 1, 3, 4, 2, 4, 4, 4, 0, 1, 2, 3, 4, 4, 4, 4])


def test_max_tile_must_be_a_multiple_of_align():
    x, index, weights, experts, _ = make_problem("random", 2)
    with pytest.raises(ValueError, match="multiple"):
        dropless.dropless(x, index, weights, experts, max_tile=6, align=4)


# ----------------------------------------------------------------------------------------
# Kernel choice (ragged_kernels). The accelerator kernels cannot run here, so a stand-in
# `tokamax` module records every call and computes it with jax.lax.ragged_dot: the engine
# must reach it on GPU/TPU, pass it the sorted buffer, the stacked weights and the group
# sizes, and still equal the reference loop, gradients included.
# ----------------------------------------------------------------------------------------


@pytest.fixture
def recording_tokamax(monkeypatch):
    """A `tokamax` module whose ragged_dot records (lhs shape, rhs shape, group sizes,
    preferred_element_type) and returns jax.lax.ragged_dot's result."""
    calls = []

    def ragged_dot(lhs, rhs, group_sizes, preferred_element_type=None, **kwargs):
        assert not kwargs, f"unexpected arguments {sorted(kwargs)}"
        calls.append((lhs.shape, rhs.shape, group_sizes, preferred_element_type))
        return jax.lax.ragged_dot(lhs, rhs, group_sizes, preferred_element_type=preferred_element_type)

    module = types.ModuleType("tokamax")
    module.ragged_dot = ragged_dot
    monkeypatch.setitem(sys.modules, "tokamax", module)
    return calls


def absent_tokamax(monkeypatch):
    monkeypatch.setitem(sys.modules, "tokamax", None)  # import_module raises ImportError


@pytest.mark.parametrize("backend", ["gpu", "tpu"])
def test_accelerators_pick_tokamax_when_it_imports(monkeypatch, recording_tokamax, backend):
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    assert dropless.default_implementation() == "tokamax"


def test_accelerators_fall_back_to_ragged_dot_without_tokamax(monkeypatch):
    absent_tokamax(monkeypatch)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert ragged_kernels.tokamax_module() is None
    assert dropless.default_implementation() == "ragged_dot"


def test_cpu_runs_the_tiled_kernel_even_with_tokamax(monkeypatch, recording_tokamax):
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    assert dropless.default_implementation() == "tiled"


def test_bad_implementations_are_named(monkeypatch):
    x, index, weights, experts, _ = make_problem("random", 2)
    with pytest.raises(ValueError, match="'megablocks'.*expected one of"):
        dropless.dropless(x, index, weights, experts, implementation="megablocks")
    absent_tokamax(monkeypatch)
    with pytest.raises(ValueError, match="needs the tokamax package"):
        dropless.dropless(x, index, weights, experts, implementation="tokamax")


def test_default_engine_on_gpu_hands_tokamax_the_sorted_buffer(monkeypatch, recording_tokamax):
    # The engine as a model calls it, no implementation named, on a GPU backend.
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    routing, top_k = "all_to_one", 2
    x, index, weights, experts, cotangent = make_problem(routing, top_k)
    y_ref, _, grads_ref = reference_results(routing, top_k)
    # A wrapper of its own: a jitted dropless.dropless traced earlier on CPU would be reused.
    engine = lambda *a, **k: dropless.dropless(*a, **k)  # noqa: E731
    y, num_dropped, grads = value_and_grads(engine, x, index, weights, experts, cotangent)
    assert int(num_dropped) == 0
    assert_close_tree(y, y_ref, 1e-5)
    assert_close_tree(grads, grads_ref, 1e-5)

    # Forward: gate and up on the sorted buffer [N, D] with [E, D, F], then down on
    # [N, F] with [E, F, D]; N = S K = 74 rows, every one in some group. (The backward
    # differentiates the stand-in, so it adds no calls of its own.)
    num_experts, d_model, ffn = experts.down.shape[0], experts.down.shape[2], experts.down.shape[1]
    n = NUM_TOKENS * top_k
    shapes = [(lhs, rhs) for lhs, rhs, _, _ in recording_tokamax]
    assert shapes == [((n, d_model), (num_experts, d_model, ffn))] * 2 + [((n, ffn), (num_experts, ffn, d_model))]
    for _, _, group_sizes, out_dtype in recording_tokamax:
        assert group_sizes.shape == (num_experts,) and group_sizes.dtype == jnp.int32
        assert out_dtype == jnp.float32


def test_tokamax_group_sizes_count_each_experts_rows(monkeypatch, recording_tokamax):
    # Outside jit the recorded group sizes are values: expert e's count of assignments.
    x, index, weights, experts, _ = make_problem("half_empty", 2)
    dropless.dropless(x, index, weights, experts, implementation="tokamax")
    expected = np.bincount(np.asarray(index).ravel(), minlength=experts.gate.shape[0])
    for _, _, group_sizes, _ in recording_tokamax:
        np.testing.assert_array_equal(group_sizes, expected)
    assert expected[4:].sum() == 0  # the routing left experts 4..7 empty


def test_real_tokamax_equals_reference_where_installed():
    # tokamax needs jax >= 0.11.1; on CPU it runs its XLA fallback, which must agree.
    pytest.importorskip("tokamax")
    y_ref, _, grads_ref = reference_results("random", 2)
    engine = lambda *a, **k: dropless.dropless(*a, implementation="tokamax", **k)  # noqa: E731
    y, _, grads = value_and_grads(engine, *make_problem("random", 2))
    assert_close_tree(y, y_ref, 1e-5)
    assert_close_tree(grads, grads_ref, 1e-5)
