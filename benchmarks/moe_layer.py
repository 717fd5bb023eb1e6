"""MoE layer dispatch engines against a dense SwiGLU MLP with the same active FLOPs.

Prints ONE JSON line. For each engine, the time of one jitted fwd+bwd step
(value_and_grad of sum(y) w.r.t. x and all expert weights), divided by the time of the
same step for a dense SwiGLU MLP with ffn = K * expert_ffn, i.e. the FLOPs a perfectly
efficient dropless layer would do. Timings are interleaved (dense, engine, engine, ...
per round) and each ratio is the median over rounds of (engine / dense) in that round,
so load from other work on a shared machine hits both sides alike.

On CPU it also reports the cores it ran on and, unless --no-scaling, each step's
per-core scaling: its time on one core (a child process pinned to one of them) over its
time on all of them. A dense matmul scales almost linearly; an engine that scales
worse loses ground to it on every extra core. `dropless` and `capacity` run the kernel
the engine picks by default (`dropless_implementation`); on CPU `dropless_tiled` is the
pure-XLA kernel beside it, on GPU/TPU `dropless_ragged_dot` XLA's ragged dot.

    python benchmarks/moe_layer.py                      # S=4096 D=512 E=64 K=6 F=256 fp32
    python benchmarks/moe_layer.py --tokens 1024 --with-reference
    python benchmarks/moe_layer.py --cores 1            # pinned to one core
    python benchmarks/moe_layer.py --side-by-side python3.11 other-venv/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from moe_jax.layers.mlp import swiglu
from moe_jax.moe import dispatch, dropless, ragged_kernels, threaded

LIMITS = {"dropless": 1.3, "capacity": 1.35}  # max fwd+bwd time / dense time
TARGETS = {"dropless": 1.1}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--d-model", type=int, default=512)
    p.add_argument("--experts", type=int, default=64)
    p.add_argument("--top-k", type=int, default=6)
    p.add_argument("--expert-ffn", type=int, default=256)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--capacity-factor", type=float, default=1.25)
    p.add_argument("--max-tile", type=int, default=None,
                   help="tile rows of the tiled CPU kernel (dropless_tiled; default: cpu_tiling)")
    p.add_argument("--align", type=int, default=None,
                   help="block alignment of the tiled CPU kernel (default: cpu_tiling)")
    p.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds")
    p.add_argument("--with-reference", action="store_true", help="also time the E-times-work loop")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cores", type=int, default=None,
                   help="pin this process to its first N allowed cores before JAX starts")
    p.add_argument("--no-scaling", action="store_true",
                   help="skip the one-core child run (per-core scaling)")
    p.add_argument("--side-by-side", nargs="+", metavar="PYTHON", default=None,
                   help="run this benchmark under each interpreter (e.g. two JAX versions), "
                        "alternating, and print their figures in one line")
    p.add_argument("--repeats", type=int, default=2, help="alternations for --side-by-side")
    return p.parse_args()


def make_inputs(a):
    dtype = jnp.dtype(a.dtype)
    k_x, k_logits, k_g, k_u, k_d, k_dense = jax.random.split(jax.random.PRNGKey(a.seed), 6)
    S, D, E, F, K = a.tokens, a.d_model, a.experts, a.expert_ffn, a.top_k
    x = jax.random.normal(k_x, (S, D), dtype)
    # Softmax top-k of random normal logits: close to uniform load, but with the usual
    # Poisson-like spread, which is what makes a capacity engine drop tokens.
    logits = jax.random.normal(k_logits, (S, E), jnp.float32)
    combine_weights, expert_index = jax.lax.top_k(jax.nn.softmax(logits, axis=-1), K)
    experts = dispatch.ExpertWeights(
        gate=(jax.random.normal(k_g, (E, D, F)) / D**0.5).astype(dtype),
        up=(jax.random.normal(k_u, (E, D, F)) / D**0.5).astype(dtype),
        down=(jax.random.normal(k_d, (E, F, D)) / F**0.5).astype(dtype),
    )
    kg, ku, kd = jax.random.split(k_dense, 3)
    dense = (  # ffn = K * F: the active FLOPs of one token in the MoE layer
        (jax.random.normal(kg, (D, K * F)) / D**0.5).astype(dtype),
        (jax.random.normal(ku, (D, K * F)) / D**0.5).astype(dtype),
        (jax.random.normal(kd, (K * F, D)) / (K * F) ** 0.5).astype(dtype),
    )
    return x, expert_index, combine_weights, experts, dense


def engine_step(engine, capacity_factor):
    # Routing is an argument, not a closed-over constant: XLA would otherwise
    # constant-fold the index arithmetic (and the capacity engine's scatters) at compile time.
    def loss(x, experts, expert_index, combine_weights):
        y, num_dropped = engine(x, expert_index, combine_weights, experts, capacity_factor)
        return jnp.sum(y.astype(jnp.float32)), num_dropped

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))


def dense_step():
    def loss(x, weights):
        return jnp.sum(swiglu(x, *weights).astype(jnp.float32))

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))


def compiled_memory(step, *args):
    """Bytes of arguments + outputs + temporaries of the compiled step, or (None, why)."""
    try:
        stats = step.lower(*args).compile().memory_analysis()
    except Exception as e:  # noqa: BLE001 - a backend without the analysis must not stop the run
        return None, f"memory_analysis failed: {type(e).__name__}"
    if stats is None:
        return None, "memory_analysis() returned None on this backend"
    return int(stats.temp_size_in_bytes + stats.argument_size_in_bytes + stats.output_size_in_bytes), None


def timed(step, *args):
    """(wall seconds, process CPU seconds) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    jax.block_until_ready(step(*args))
    return time.perf_counter() - wall, time.process_time() - cpu


def pin_to_cores(num_cores):
    """Restrict this process to its first `num_cores` allowed cores. Called before JAX
    creates its CPU client, which sizes its thread pool from the cores it may use."""
    allowed = sorted(os.sched_getaffinity(0))
    if not 1 <= num_cores <= len(allowed):
        raise ValueError(f"--cores={num_cores}: expected 1..{len(allowed)} (the cores this process may use)")
    os.sched_setaffinity(0, allowed[:num_cores])


def child_argv(drop):
    """This run's own arguments without the options named in `drop` (and their values)."""
    argv, skip = [], False
    for arg in sys.argv[1:]:
        if arg.startswith("--"):
            skip = arg.split("=")[0] in drop
            if skip:
                continue
        elif skip:
            continue
        argv.append(arg)
    return argv


def run_child(python, extra_args, drop=("--side-by-side", "--repeats")):
    """Figures of this benchmark run by `python` in a child process, with this run's
    arguments less `drop` plus `extra_args`."""
    out = subprocess.run([python, os.path.abspath(__file__), *child_argv(drop), *extra_args],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def engines_to_time(a, tiling):
    engines = {"capacity": dispatch.capacity, "dropless": dropless.dropless}  # the default kernels
    if jax.default_backend() == "cpu":  # the pure-XLA kernel beside the default one
        engines["dropless_tiled"] = lambda *args: dropless.dropless(
            *args, implementation="tiled", max_tile=tiling[0], align=tiling[1])
    elif ragged_kernels.default_implementation() != "ragged_dot":  # XLA's ragged dot beside it
        engines["dropless_ragged_dot"] = lambda *args: dropless.dropless(*args, implementation="ragged_dot")
    if a.with_reference:
        engines["reference"] = dispatch.reference
    return engines


def measure(a):
    x, expert_index, combine_weights, experts, dense = make_inputs(a)
    num_assignments = a.tokens * a.top_k
    load = np.bincount(np.asarray(expert_index).ravel(), minlength=a.experts)

    default_tiling = dropless.cpu_tiling(num_assignments, a.experts)
    tiling = (a.max_tile or default_tiling[0], a.align or default_tiling[1])
    steps = {"dense": (dense_step(), (x, dense))}
    for name, engine in engines_to_time(a, tiling).items():
        steps[name] = (engine_step(engine, a.capacity_factor), (x, experts, expert_index, combine_weights))

    result = {name: {} for name in steps}
    for name, (step, args) in steps.items():
        out = step(*args)  # compile + warm up
        if name != "dense":
            (_, num_dropped), _ = out
            result[name]["dropped_fraction"] = float(num_dropped) / num_assignments
        result[name]["peak_memory_bytes"], why = compiled_memory(step, *args)
        if why:
            result[name]["peak_memory_null_why"] = why
    # The threaded kernel's row buffers live on the host, outside XLA's memory analysis.
    result["dropless"]["host_scratch_bytes"] = threaded.scratch_bytes()

    load_before = os.getloadavg()[0]
    times = {name: [] for name in steps}
    cpu_times = {name: [] for name in steps}
    for _ in range(a.rounds):
        for name, (step, args) in steps.items():
            wall, cpu = timed(step, *args)
            times[name].append(wall)
            cpu_times[name].append(cpu)
    for name, ts in times.items():
        result[name]["ms_median"] = round(1e3 * statistics.median(ts), 2)
        result[name]["ms_min"] = round(1e3 * min(ts), 2)
        if name != "dense":
            ratios = [t / d for t, d in zip(ts, times["dense"])]
            result[name]["vs_dense"] = round(statistics.median(ratios), 3)
            # CPU time counts only this process's work, so it barely moves with the load
            # from other processes; it hides how well each side uses both cores.
            cpu_ratios = [t / d for t, d in zip(cpu_times[name], cpu_times["dense"])]
            result[name]["cpu_time_vs_dense"] = round(statistics.median(cpu_ratios), 3)

    figures = {
        "benchmark": "moe_layer",
        "shape": {"S": a.tokens, "D": a.d_model, "E": a.experts, "K": a.top_k, "F": a.expert_ffn,
                  "dense_ffn": a.top_k * a.expert_ffn, "dtype": a.dtype},
        "capacity_factor": a.capacity_factor,
        "dropless_tiling": dict(zip(("max_tile", "align"), tiling)),
        "backend": jax.default_backend(),
        "jax": jax.__version__,
        "cores": len(os.sched_getaffinity(0)),
        "dropless_implementation": dropless.default_implementation(
            num_assignments, a.d_model, a.expert_ffn),
        "routing": "softmax top-k of N(0,1) logits",
        "expert_load_max_over_mean": round(float(load.max() / load.mean()), 3),
        "empty_experts": int((load == 0).sum()),
        "rounds": a.rounds,
        # How busy the machine was: the 1-minute load average before timing, and the
        # cores the dense step got (its CPU time / wall time; 2.0 = both cores, alone).
        "loadavg_1min": round(load_before, 2),
        "dense_cores_used": round(statistics.median(
            c / w for c, w in zip(cpu_times["dense"], times["dense"])), 2),
        "dropless_vs_dense": result["dropless"]["vs_dense"],
        "capacity_vs_dense": result["capacity"]["vs_dense"],
        "limits": LIMITS,
        "targets": TARGETS,
        "pass": {name: result[name]["vs_dense"] <= limit for name, limit in LIMITS.items()},
        "engines": result,
    }
    return figures


def add_scaling(figures):
    """Per-core scaling from a child pinned to one core: its time / this run's time, per
    step (dense included), and the engine / dense ratios on that one core."""
    one = run_child(sys.executable, ["--cores", "1", "--no-scaling"],
                    drop=("--side-by-side", "--repeats", "--cores", "--no-scaling"))
    figures["one_core_vs_dense"] = {name: one["engines"][name]["vs_dense"] for name in LIMITS}
    figures["per_core_scaling"] = {
        name: round(one["engines"][name]["ms_median"] / timing["ms_median"], 2)
        for name, timing in figures["engines"].items()}
    figures["one_core_loadavg_1min"] = one["loadavg_1min"]


def side_by_side(a):
    """The same benchmark under each interpreter, alternating `repeats` times; per
    interpreter the median over its runs of each figure that decides a pass."""
    runs = {python: [] for python in a.side_by_side}
    for _ in range(a.repeats):
        for python in a.side_by_side:
            runs[python].append(run_child(python, []))
    keys = ("dropless_vs_dense", "capacity_vs_dense", "one_core_vs_dense", "per_core_scaling")
    by_python = {}
    for python, figures in runs.items():
        row = {"jax": figures[0]["jax"], "cores": figures[0]["cores"],
               "loadavg_1min": [f["loadavg_1min"] for f in figures],
               "dense_cores_used": [f["dense_cores_used"] for f in figures],
               "dense_ms_median": statistics.median(f["engines"]["dense"]["ms_median"] for f in figures)}
        for key in keys:
            values = [f[key] for f in figures if key in f]
            if not values:
                continue
            row[key] = (statistics.median(values) if not isinstance(values[0], dict) else
                        {k: statistics.median(v[k] for v in values) for k in values[0]})
        by_python[python] = row
    return {"benchmark": "moe_layer", "side_by_side": by_python, "repeats": a.repeats,
            "arguments": child_argv(("--side-by-side", "--repeats"))}


def main():
    a = parse_args()
    if a.side_by_side:
        print(json.dumps(side_by_side(a)))
        return
    if a.cores:
        pin_to_cores(a.cores)
    figures = measure(a)
    if jax.default_backend() == "cpu" and not a.no_scaling and figures["cores"] > 1:
        add_scaling(figures)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
