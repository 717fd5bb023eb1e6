"""What per-example gradient clipping (DP-SGD) costs on the MoE: step time and memory
against the plain training step of the same model and batch.

Prints ONE JSON line. `time_ratio` = DP-SGD step / plain step (moe_jax.train.dp_step:
per-example gradients by vmap, optax's clip + noise + mean, AdamW; against
moe_jax.train.step's step with the same AdamW), the median over interleaved rounds, so
load from other work hits both alike. The limit it is held to, measured in the same
run: `loop_ratio`, the cost of the obvious alternative, B single-example plain steps'
forward + backward (a per-example loop, what microbatches of one do); vmap must beat it.

`memory_ratio` = the compiled DP step's temporary bytes / the plain step's (XLA's
memory analysis of the two executables: deterministic, free of load noise). The
per-example gradients are B copies of every parameter: `per_example_grad_bytes` = B x
parameters x 4. `expert_rows_touched` is the share of (example, expert) gradient blocks
that are non-zero: an example's gradient has the shape of all E experts, and with T
tokens each choosing K of them nearly every expert is touched once T K >> E, so the
MoE's sparsity saves nothing per example at useful sequence lengths.

    python benchmarks/dp_clipping.py                       # the arithmetic tiny model, B 32, E 8
    python benchmarks/dp_clipping.py --batch 64 --experts 32
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from moe_jax.jobs import recipes
from moe_jax.models.transformer import Transformer
from moe_jax.train.dp_step import dp_optimizer, make_dp_train_step, per_example_grads
from moe_jax.train.losses import LossWeights
from moe_jax.train.optimizer import make_optimizer
from moe_jax.train.privacy import PrivacySettings
from moe_jax.train.state import create_train_state
from moe_jax.train.step import forward_with_loss, make_train_step


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=32)
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--dispatch", default="dropless", help="the MoE dispatch engine of both steps")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps-per-round", type=int, default=3)
    return p.parse_args()


def setup(a):
    c = recipes.arithmetic("tiny")
    recipes.earlier_tiny(c)  # the model the recorded figures were measured with
    m = c.model
    m.num_experts, m.top_k, m.bias_update_rate, m.max_seq_len = a.experts, a.top_k, 0.0, a.seq_len
    m.dispatch = a.dispatch
    model = Transformer.from_config(m)
    weights = LossWeights.from_config(m)
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, 99, (a.batch, a.seq_len + 1)).astype(np.int32)
    batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
             "loss_mask": np.ones((a.batch, a.seq_len), np.float32),
             "segment_ids": np.ones((a.batch, a.seq_len), np.int32),
             "positions": np.broadcast_to(np.arange(a.seq_len, dtype=np.int32), (a.batch, a.seq_len)).copy()}
    return c, m, model, weights, jax.tree.map(jnp.asarray, batch)


def temp_bytes(jitted, *args) -> int:
    return int(jitted.lower(*args).compile().memory_analysis().temp_size_in_bytes)


def main():
    a = parse_args()
    c, m, model, weights, batch = setup(a)
    plain_opt = make_optimizer(c.optimizer)
    settings = PrivacySettings(clip_norm=1.0, noise_multiplier=1.0, delta=1e-5, sampling_rate=0.01, steps=1)
    dp_opt = dp_optimizer(make_optimizer(c.optimizer), settings, seed=0)
    plain_state = create_train_state(model, plain_opt, jax.random.PRNGKey(0), a.seq_len)
    dp_state = create_train_state(model, dp_opt, jax.random.PRNGKey(0), a.seq_len)
    plain = jax.jit(make_train_step(model, plain_opt, weights, 0.0), donate_argnums=0)
    private = jax.jit(make_dp_train_step(model, dp_opt, weights, 1.0), donate_argnums=0)
    one_row = jax.tree.map(lambda x: x[:1], batch)
    single = jax.jit(jax.grad(lambda p, b: forward_with_loss(model, p, plain_state.router_bias, b, weights)[0]))

    rng = jax.random.PRNGKey(0)
    memory = {"plain": temp_bytes(plain, plain_state, batch, rng), "dp": temp_bytes(private, dp_state, batch, rng)}
    plain_state, _ = plain(plain_state, batch, rng)  # compile and warm both
    dp_state, _ = private(dp_state, batch, rng)
    jax.block_until_ready(single(plain_state.params, one_row))

    def timed(fn):
        start = time.perf_counter()
        out = None
        for _ in range(a.steps_per_round):
            out = fn()
        jax.block_until_ready(out)
        return (time.perf_counter() - start) / a.steps_per_round

    ratios, loops, plain_times = [], [], []
    for _ in range(a.rounds):
        holder = {}

        def plain_step():
            holder["p"], metrics = plain(holder.get("p", plain_state), batch, rng)
            return metrics

        def dp_step():
            holder["d"], metrics = private(holder.get("d", dp_state), batch, rng)
            return metrics

        t_plain = timed(plain_step)
        t_dp = timed(dp_step)
        t_single = timed(lambda: single(holder["p"].params, one_row))
        plain_state, dp_state = holder["p"], holder["d"]
        ratios.append(t_dp / t_plain)
        loops.append(a.batch * t_single / t_plain)
        plain_times.append(t_plain)

    params = sum(x.size for x in jax.tree.leaves(plain_state.params))
    _, _, grads = jax.jit(lambda p, b: per_example_grads(model, weights, p, plain_state.router_bias, b))(
        plain_state.params, batch)
    # Routed expert weights: [B, layers, E, D, F] per-example gradients.
    experts = [g for path, g in jax.tree_util.tree_leaves_with_path(grads)
               if getattr(path[-1], "key", "") in ("wi_gate", "wi_up", "wo")]
    touched = [np.asarray(jnp.any(g != 0, axis=(-2, -1))).mean() for g in experts]
    time_ratio, loop_ratio = statistics.median(ratios), statistics.median(loops)
    print(json.dumps({
        "batch": a.batch, "seq_len": a.seq_len, "experts": a.experts, "top_k": a.top_k,
        "dispatch": a.dispatch, "parameters": params,
        "plain_step_ms": round(1e3 * statistics.median(plain_times), 2),
        "time_ratio": round(time_ratio, 3), "loop_ratio": round(loop_ratio, 3),
        "beats_the_loop": time_ratio < loop_ratio,
        "plain_temp_mib": round(memory["plain"] / 2**20, 2), "dp_temp_mib": round(memory["dp"] / 2**20, 2),
        "memory_ratio": round(memory["dp"] / max(memory["plain"], 1), 2),
        "per_example_grad_mib": round(a.batch * params * 4 / 2**20, 2),
        "expert_rows_touched": round(float(np.mean(touched)), 3) if touched else None,
        "loadavg_1min": round(os.getloadavg()[0], 2),
    }))


if __name__ == "__main__":
    main()
