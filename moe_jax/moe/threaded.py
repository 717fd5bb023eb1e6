"""CPU expert MLP on threads of its own: the grouped SwiGLU of the dropless engine, run
expert block by expert block on a pool of host threads, one block per BLAS call.

Shapes: S tokens, D model, E experts, F expert ffn, K experts per token, N = S * K rows
of the expert-sorted buffer (no padding), n rows of one expert.

Why a kernel outside XLA: XLA:CPU runs independent products of one program on its two
threads, but not the iterations of a loop, and an expert loop's products are small, so
the pure-XLA kernel (`grouped_matmul.tiled_moe`) leaves cores idle: on two cores it sits
near 1.5x a dense MLP of the same FLOPs where it is 1.25x on one (benchmarks/RESULTS.md).
Here each thread takes a contiguous range of experts with about the same number of rows
and runs their products with the BLAS numpy ships, one thread per BLAS call, so the work
spreads over the cores the way a dense matmul's does.

The results do not depend on the number of threads: each expert's block is computed the
same way whoever runs it, every output row is written by one expert, and the per-token
sums over K run in a fixed order (row buffers, then a gather-sum), never as scatter-adds
racing between threads.

It is a host callback (`buffer_callback`: numpy views of XLA's own buffers, nothing
copied) with a `jax.custom_vjp`. It runs inside the jitted step like any op, but XLA
cannot look into it, so it cannot be serialized by `jax.export` and jit cannot partition
it: `dropless.default_implementation` picks it only on CPU with more than one core, on
one device or per device inside `jax.shard_map`, for layers big enough to repay the
hand-over, and never under `ragged_kernels.portable()`.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np

try:  # zero-copy host callbacks (jax >= 0.7); without them the kernel is not offered
    from jax.experimental.buffer_callback import buffer_callback
except ImportError:  # pragma: no cover - depends on the installed jax
    buffer_callback = None

# Below this many multiply-adds per product set (rows N x D x F) the hand-over to the host
# costs more than the threads gain: at N D F = 2.7e8 the XLA kernel was as fast, at 1.1e9
# this one 4% faster, at the benchmark's 3.2e9 15-20% (benchmarks/RESULTS.md).
MIN_WORK = 2**29


def available() -> bool:
    """Whether this jax has zero-copy buffer callbacks and threadpoolctl imports."""
    if buffer_callback is None:
        return False
    try:
        import threadpoolctl  # noqa: F401
    except ImportError:
        return False
    return True


def runs_per_device() -> bool:
    """Whether a callback traced here runs once per device on that device's own data.

    True on one device, and inside `jax.shard_map` over every mesh axis with more than
    one device. Under a mesh that jit partitions automatically XLA would run a callback
    on gathered operands, so there the XLA kernel is used.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return jax.device_count() == 1
    manual = set(getattr(mesh, "manual_axes", ()))
    return all(size == 1 or name in manual for name, size in zip(mesh.axis_names, mesh.axis_sizes))


def worth_it(num_rows, d_model, ffn) -> bool:
    """Whether there is more than one core to spread over and the work is big enough
    (static shapes only: a symbolic one is not). On one core the XLA kernel is as fast
    or slightly faster (1.25 against 1.27x dense, benchmarks/RESULTS.md)."""
    dims = (num_rows, d_model, ffn)
    return (num_threads() > 1 and all(isinstance(d, int) for d in dims)
            and num_rows * d_model * ffn >= MIN_WORK)


def scratch_bytes() -> int:
    """Host memory held between calls by the kernel's reused buffers (not in XLA's
    memory analysis of a step)."""
    return sum(buf.nbytes for buf in _BUFFERS.values())


# ----------------------------------------------------------------------------------------
# The pool, the BLAS thread limit and reused buffers.
# ----------------------------------------------------------------------------------------

_LOCK = threading.Lock()  # one kernel call at a time: they share the pool and the buffers
_POOL: ThreadPoolExecutor | None = None
_BLAS = None  # threadpoolctl controller, made on first use
_BUFFERS: dict = {}  # (name, shape) -> array, see _buffer
_MAX_BUFFER_SHAPES = 8  # distinct call shapes kept (train step, eval, prefill, ...)
_BUFFER_NAMES = 4  # out_rows, dx_rows, and g, u for a forward with no backward


def _forget_pool_in_child():
    """A forked child (data loader workers) inherits the pool object but not its threads,
    and maybe a held lock: give it its own."""
    global _POOL, _LOCK
    _POOL, _LOCK = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_in_child)


def num_threads() -> int:
    """The cores this process may run on (affinity mask), as a dense matmul would use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no affinity API (macOS)
        return max(1, os.cpu_count() or 1)


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(num_threads(), thread_name_prefix="moe-threaded")
    return _POOL


def _one_blas_thread():
    """A context in which numpy's BLAS runs each call on its calling thread only: our
    threads are the parallelism, and a BLAS pool under each would oversubscribe."""
    global _BLAS
    if _BLAS is None:
        from threadpoolctl import ThreadpoolController
        _BLAS = ThreadpoolController()
    return _BLAS.limit(limits=1, user_api="blas")


def _buffer(name: str, shape: tuple) -> np.ndarray:
    """A float32 scratch array kept between calls of the same shape.

    Fresh pages cost ~0.4 ms per MB on first touch here, and a step's row buffers are
    tens of MB, so they are reused. Safe because calls hold _LOCK and these buffers never
    leave the kernel: its results are written into XLA's own output buffers.
    """
    key = (name, shape)
    buf = _BUFFERS.get(key)
    if buf is None:
        if len(_BUFFERS) >= _BUFFER_NAMES * _MAX_BUFFER_SHAPES:
            _BUFFERS.clear()
        buf = _BUFFERS[key] = np.zeros(shape, np.float32)
    return buf


def _expert_ranges(group_sizes: np.ndarray, parts: int) -> list[tuple[int, int]]:
    """`parts` contiguous ranges of experts with about equal rows each."""
    ends = np.cumsum(group_sizes)
    total = int(ends[-1]) if len(ends) else 0
    cuts = [int(np.searchsorted(ends, total * i / parts, side="right")) for i in range(1, parts)]
    bounds = [0, *cuts, len(group_sizes)]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def _run(work, items):
    """work(item) for every item on the pool; exceptions raised here, in order."""
    if len(items) <= 1:
        for item in items:
            work(item)
        return
    for future in [_pool().submit(work, item) for item in items]:
        future.result()


def _gather_sum(rows: np.ndarray, assignment_row: np.ndarray, out: np.ndarray, block: int = 256):
    """out[s] = sum_k rows[assignment_row[s, k]], k in order. rows has a zero row at its
    end for assignments without a row (assignment_row == N). Blocks of `block` tokens,
    so that the K gathered rows of a block are summed while in cache."""
    num_tokens = out.shape[0]
    per_thread = -(-num_tokens // (num_threads() * block)) * block

    def work(first):
        for start in range(first, min(first + per_thread, num_tokens), block):
            index = assignment_row[start:start + block]
            acc = rows[index[:, 0]]
            for k in range(1, index.shape[1]):
                acc += rows[index[:, k]]
            out[start:start + block] = acc

    _run(work, list(range(0, num_tokens, per_thread)))


def _sigmoid(g, out):
    np.negative(g, out=out)
    np.exp(out, out=out)
    out += 1.0
    return np.reciprocal(out, out=out)


# ----------------------------------------------------------------------------------------
# Host functions: numpy in, numpy out, float32 throughout.
# ----------------------------------------------------------------------------------------


def _starts(group_sizes):
    return np.concatenate([[0], np.cumsum(group_sizes)[:-1]]).astype(np.int64)


def host_forward(x, row_weight, row_token, group_sizes, assignment_row, gate, up, down, y,
                 g_all=None, u_all=None):
    """Writes y [S, D] and the pre-activations g, u [N, F] (kept for the backward; reused
    scratch when not asked for), all float32 arrays given by the caller."""
    num_rows, d_model = row_token.shape[0], x.shape[1]
    ffn = gate.shape[-1]
    if g_all is None:
        g_all, u_all = _buffer("g", (num_rows, ffn)), _buffer("u", (num_rows, ffn))
    starts = _starts(group_sizes)
    out_rows = _buffer("out_rows", (num_rows + 1, d_model))
    out_rows[num_rows] = 0.0

    def work(experts):
        for e in range(*experts):
            a, n = int(starts[e]), int(group_sizes[e])
            if n == 0:
                continue
            rows = slice(a, a + n)
            xt = x[row_token[rows]]  # [n, D]
            g = np.matmul(xt, gate[e], out=g_all[rows])
            u = np.matmul(xt, up[e], out=u_all[rows])
            h = _sigmoid(g, np.empty_like(g))
            h *= g
            h *= u  # silu(g) * u
            h *= row_weight[rows, None]  # w (h @ down) as (w h) @ down: a pass over F, not D
            np.matmul(h, down[e], out=out_rows[rows])

    with _one_blas_thread():
        _run(work, _expert_ranges(group_sizes, num_threads()))
    _gather_sum(out_rows, assignment_row, y)


def host_backward(x, row_weight, row_token, group_sizes, assignment_row, gate, up, down, g_all, u_all, dy,
                  dx, d_row_weight, d_gate, d_up, d_down):
    """Writes dx [S, D], d_row_weight [N], d_gate, d_up [E, D, F] and d_down [E, F, D],
    all float32 arrays given by the caller."""
    num_rows, d_model = row_token.shape[0], x.shape[1]
    starts = _starts(group_sizes)
    dx_rows = _buffer("dx_rows", (num_rows + 1, d_model))
    dx_rows[num_rows] = 0.0
    d_row_weight[int(starts[-1] + group_sizes[-1]):] = 0.0  # rows of no expert (dropped assignments)

    def work(experts):
        for e in range(*experts):
            a, n = int(starts[e]), int(group_sizes[e])
            if n == 0:  # no rows, no gradient
                d_gate[e] = 0.0
                d_up[e] = 0.0
                d_down[e] = 0.0
                continue
            rows = slice(a, a + n)
            tokens = row_token[rows]
            xt, dyt = x[tokens], dy[tokens]  # [n, D]
            g, u = g_all[rows], u_all[rows]  # [n, F]
            w = row_weight[rows, None]
            sig = _sigmoid(g, np.empty_like(g))
            silu = sig * g
            h = silu * u
            dh = np.matmul(dyt, down[e].T)  # [n, F] = dy @ down^T, before the row weight
            # d loss / d weight = <out, dy> = <h, dy @ down^T>: a sum over F, not D.
            np.einsum("nf,nf->n", h, dh, out=d_row_weight[rows])
            h *= w
            np.matmul(h.T, dyt, out=d_down[e])  # (w h)^T dy
            dh *= w
            du = dh * silu
            # silu'(g) = sig (1 + g (1 - sig)); dg = dh * u * silu'(g), in place in dh.
            np.subtract(1.0, sig, out=h)
            h *= g
            h += 1.0
            h *= sig
            dh *= u
            dh *= h
            np.matmul(xt.T, dh, out=d_gate[e])
            np.matmul(xt.T, du, out=d_up[e])
            dxt = np.matmul(dh, gate[e].T, out=dx_rows[rows])
            dxt += np.matmul(du, up[e].T)

    with _one_blas_thread():
        _run(work, _expert_ranges(group_sizes, num_threads()))
    _gather_sum(dx_rows, assignment_row, dx)


# ----------------------------------------------------------------------------------------
# The JAX op.
# ----------------------------------------------------------------------------------------


def _as_float32(a):
    a = np.asarray(a)
    return a if a.dtype == np.float32 else a.astype(np.float32)


def _callback(host_fn, out_shapes, *args):
    """host_fn(*inputs, *outputs) on numpy views of XLA's own buffers: inputs read in
    place, outputs written in place (no copies either way, which for the expert weights
    and their gradients would cost more than the products). Floating inputs are read as
    float32; an output of another dtype is computed in float32 and cast into place."""

    def call(ctx, outs, *ins):
        del ctx
        ins = [np.asarray(a) for a in ins]
        ins = [a if np.issubdtype(a.dtype, np.integer) else _as_float32(a) for a in ins]
        outs = [np.asarray(o) for o in outs]
        work = [o if o.dtype == np.float32 else np.empty(o.shape, np.float32) for o in outs]
        with _LOCK:
            host_fn(*ins, *work)
        for o, w in zip(outs, work):
            if o is not w:
                o[...] = w.astype(o.dtype)

    return buffer_callback(call, tuple(out_shapes), vmap_method="sequential")(*args)


@jax.custom_vjp
def threaded_moe(x, row_weight, row_token, group_sizes, assignment_row, gate, up, down):
    """y[s] = sum_k w[s, k] * SwiGLU_e(s, k)(x[s]) with rows sorted by expert.

    x: [S, D]; row_weight: [N] weight of each row's assignment; row_token: [N] int32,
    token of each row (rows of expert e: the group_sizes[e] after those of experts < e);
    group_sizes: [E] int32; assignment_row: [S, K] int32, the row of each assignment, N
    for one that has no row (it reads as zeros); gate, up: [E, D, F]; down: [E, F, D]
    -> y [S, D] float32. Computed in float32 whatever the input dtypes.
    """
    (y,) = _callback(host_forward, (jax.ShapeDtypeStruct(x.shape, jnp.float32),), x, row_weight,
                     row_token, group_sizes, assignment_row, gate, up, down)
    return y


def _threaded_fwd(x, row_weight, row_token, group_sizes, assignment_row, gate, up, down):
    num_rows, ffn = row_token.shape[0], gate.shape[-1]
    shapes = (jax.ShapeDtypeStruct(x.shape, jnp.float32),
              jax.ShapeDtypeStruct((num_rows, ffn), jnp.float32),
              jax.ShapeDtypeStruct((num_rows, ffn), jnp.float32))
    y, g, u = _callback(host_forward, shapes, x, row_weight, row_token, group_sizes, assignment_row,
                        gate, up, down)
    return y, (x, row_weight, row_token, group_sizes, assignment_row, gate, up, down, g, u)


def _threaded_bwd(residuals, dy):
    x, row_weight, row_token, group_sizes, assignment_row, gate, up, down, g, u = residuals
    shapes = tuple(jax.ShapeDtypeStruct(a.shape, a.dtype) for a in (x, row_weight, gate, up, down))
    dx, d_row_weight, d_gate, d_up, d_down = _callback(
        host_backward, shapes, x, row_weight, row_token, group_sizes, assignment_row, gate, up, down,
        g, u, dy.astype(jnp.float32))
    return dx, d_row_weight, None, None, None, d_gate, d_up, d_down


threaded_moe.defvjp(_threaded_fwd, _threaded_bwd)
