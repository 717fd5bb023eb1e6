"""Training-step throughput and model FLOP utilisation (MFU) on this machine.

Prints ONE JSON line: tokens/s of the jitted train step (fwd + bwd + AdamW + bias update)
for a DeepSeek-shaped MoE at d_model 512, the model FLOPs per token, and MFU against the
float32 matmul rate measured in the same run on the same machine (a chain of 1024^3
matmuls, the best case for this CPU). Timings interleave the matmul probe and the train
step, so load from other work hits both alike.

Model FLOPs per token = 6 x (activated matmul parameters, head included, input
embedding excluded) + attention scores and values: 6 x layers x T x H x (qk + v), the
full T x T products (PaLM's convention, and this benchmark's since it was written). The
attention kernel skips most of the square's upper half (layers/attention.py: query
blocks), so `mfu_causal` also counts only the causal triangle, (T + 1) / 2T of it: the
stricter figure, lower by the attention's share of the FLOPs.

    python benchmarks/train_step.py                         # d_model 512, dropless
    python benchmarks/train_step.py --dispatch capacity --seq-len 256 --batch 8
    python benchmarks/train_step.py --breakdown             # + where the step's time goes
    python benchmarks/train_step.py --mesh data=2,expert=4 --config experiments/pretrain_arith.py:small
                                   # per-device memory of the sharded step vs moe-jax plan

--breakdown traces three more steps with the JAX profiler and adds `time_share`: each
part of the model's share of the step's op time (every op's duration on the thread that
ran it, less the ops nested in it; work an op hands to helper threads counts as its own
wall time), the part found from the JAX source path XLA keeps on every compiled op.
"""

from __future__ import annotations

import os
import sys

# --mesh compiles for simulated CPU devices, which must exist before jax starts.
if "--mesh" in " ".join(sys.argv) and "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    _devices = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--devices=")), "8")
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={_devices}").strip()

import argparse
import collections
import glob
import gzip
import json
import re
import statistics
import tempfile
import time

import jax
import numpy as np

from moe_jax.config import load_config
from moe_jax.models.param_count import count_parameters
from moe_jax.models.transformer import Transformer
from moe_jax.train.optimizer import default_optimizer_config, make_optimizer
from moe_jax.train.state import create_train_state
from moe_jax.train.step import make_train_step
from moe_jax.train.losses import LossWeights

GOAL_MFU = 0.50  # of the matmul rate measured in the same run, on the full-square count


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--d-model", type=int, default=512)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--experts", type=int, default=16)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--expert-ffn", type=int, default=512)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--dispatch", default="dropless")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--mesh", default=None, help="AXIS=SIZE,...: compile the sharded step on this mesh "
                   "and compare its per-device memory with moe-jax plan (benchmarks/mesh_memory.py)")
    p.add_argument("--config", default="experiments/pretrain_arith.py:tiny", help="with --mesh: the config")
    p.add_argument("--devices", default="8", help="with --mesh: simulated CPU devices (--devices=N)")
    p.add_argument("--steps-per-round", type=int, default=3)
    p.add_argument("--breakdown", action="store_true", help="add the time share of each model part")
    return p.parse_args()


def model_config(a):
    m = load_config("configs/tiny.py").model
    m.d_model, m.num_layers, m.num_dense_layers, m.num_heads = a.d_model, a.layers, 1, a.heads
    m.dense_ffn = 4 * a.d_model
    m.q_lora_rank, m.kv_lora_rank = 0, a.d_model // 4
    m.qk_nope_head_dim, m.qk_rope_head_dim, m.v_head_dim = 64, 32, 64
    m.num_experts, m.top_k, m.expert_ffn = a.experts, a.top_k, a.expert_ffn
    m.n_group, m.topk_group, m.mtp_depth = 1, 1, 0
    m.vocab_size, m.max_seq_len, m.dispatch = 256, a.seq_len, a.dispatch
    return m


def model_flops_per_token(m, seq_len, causal=False):
    counts = count_parameters(m)
    matmul_params = counts["activated"] - counts["main"].get("norms", {"activated": 0})["activated"]
    attention = 6 * m.num_layers * seq_len * m.num_heads * (
        m.qk_nope_head_dim + m.qk_rope_head_dim + m.v_head_dim)
    if causal:
        attention = attention * (seq_len + 1) / (2 * seq_len)
    return 6 * matmul_params + attention


def matmul_rate(rounds=1):
    """Best float32 matmul FLOP/s: a chain of 1024 x 1024 products."""
    n, chain = 1024, 8
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n)) / n**0.5

    @jax.jit
    def f(x):
        for _ in range(chain):
            x = x @ a
        return x

    f(a).block_until_ready()
    start = time.perf_counter()
    f(a).block_until_ready()
    return 2 * n**3 * chain / (time.perf_counter() - start)


# Model parts by the JAX source path of each compiled op (first match wins). Ops with no
# path are buffers XLA fills or copies for itself; ops of jit(train_step) outside the
# model are the optimizer and the loss bookkeeping.
PARTS = (("router", r"/moe/router"), ("shared expert", r"/moe/shared"),
         ("routed experts + dispatch", r"/moe/"), ("attention", r"/attn[/.]"), ("dense MLP", r"/mlp/"),
         ("norms", r"norm"), ("embedding, head, loss", r"logits|embed|log_softmax|cross_entropy"),
         ("scanned layers: slicing their parameters", r"dynamic_index_in_dim"),
         ("scanned layers: stacking their outputs", r"dynamic_update_index_in_dim"),
         ("optimizer, loss bookkeeping", r"^jit\(train_step\)/(?!.*Transformer)"))
NOT_OPS = ("$", "ThunkExecutor", "Slinky", "Threadpool", "end: ")


def time_share(step, state, batch, num_steps=3):
    """{part: share of op time} over `num_steps` traced steps, or {"error": why}."""
    compiled = step.lower(state, batch, jax.random.PRNGKey(0)).compile().as_text()
    op_path = dict(re.findall(r'%([\w.\-]+) = [^\n]*?metadata=\{op_name="([^"]*)"', compiled))
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            for i in range(num_steps):
                state, metrics = step(state, batch, jax.random.PRNGKey(i))
            jax.block_until_ready(metrics)
        traces = glob.glob(f"{trace_dir}/**/*.trace.json.gz", recursive=True)
        if not traces:
            return {"error": "the profiler wrote no perfetto trace"}
        events = [e for e in json.load(gzip.open(traces[0]))["traceEvents"]
                  if e.get("ph") == "X" and not e["name"].startswith(NOT_OPS)]
    # Exclusive time per op: an event's duration less the events nested in it on its thread.
    own = collections.Counter()
    by_thread = collections.defaultdict(list)
    for e in events:
        by_thread[e["tid"]].append(e)
    for thread_events in by_thread.values():
        thread_events.sort(key=lambda e: (e["ts"], -e["dur"]))
        open_events = []
        for e in thread_events:
            while open_events and open_events[-1]["ts"] + open_events[-1]["dur"] <= e["ts"]:
                open_events.pop()
            own[e["name"]] += e["dur"]
            if open_events:
                own[open_events[-1]["name"]] -= e["dur"]
            open_events.append(e)
    parts = collections.Counter()
    for name, micros in own.items():
        if name.startswith(("while", "cond")):  # loop and branch control; its ops count below
            continue
        path = op_path.get(name)
        part = "buffers with no source op (fills, copies)" if path is None else next(
            (part for part, pattern in PARTS if re.search(pattern, path)), "other")
        parts[part] += micros
    total = sum(parts.values())
    return {part: round(micros / total, 3) for part, micros in parts.most_common()}


def main():
    if parse_args().mesh:
        from mesh_memory import mesh_memory  # beside this script

        a = parse_args()
        print(json.dumps(mesh_memory(a.config, a.mesh)))
        return
    a = parse_args()
    m = model_config(a)
    model = Transformer.from_config(m)
    optimizer = make_optimizer(default_optimizer_config())
    state = create_train_state(model, optimizer, jax.random.PRNGKey(0), a.seq_len)
    step = jax.jit(make_train_step(model, optimizer, LossWeights.from_config(m), m.bias_update_rate), donate_argnums=0)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, m.vocab_size, (a.batch, a.seq_len + 1)).astype(np.int32)
    batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
             "loss_mask": np.ones((a.batch, a.seq_len), np.float32),
             "segment_ids": np.ones((a.batch, a.seq_len), np.int32),
             "positions": np.broadcast_to(np.arange(a.seq_len, dtype=np.int32), (a.batch, a.seq_len))}
    compile_start = time.perf_counter()
    state, metrics = step(state, batch, jax.random.PRNGKey(0))
    jax.block_until_ready(metrics)
    compile_seconds = time.perf_counter() - compile_start

    flops_per_token = model_flops_per_token(m, a.seq_len)
    tokens_per_step = a.batch * a.seq_len
    utilisation, throughput, rates = [], [], []
    for _ in range(a.rounds):
        rate = matmul_rate()
        start = time.perf_counter()
        for i in range(a.steps_per_round):
            state, metrics = step(state, batch, jax.random.PRNGKey(i))
        jax.block_until_ready(metrics)
        seconds = (time.perf_counter() - start) / a.steps_per_round
        throughput.append(tokens_per_step / seconds)
        utilisation.append(tokens_per_step * flops_per_token / seconds / rate)
        rates.append(rate)
    mfu = statistics.median(utilisation)
    print(json.dumps({
        "benchmark": "train_step", "backend": jax.default_backend(), "dispatch": a.dispatch,
        "d_model": a.d_model, "layers": a.layers, "experts": a.experts, "top_k": a.top_k,
        "expert_ffn": a.expert_ffn, "batch": a.batch, "seq_len": a.seq_len,
        "activated_params": count_parameters(m)["activated"],
        "model_flops_per_token": flops_per_token,
        "tokens_per_second": round(statistics.median(throughput), 1),
        "matmul_gflops": round(statistics.median(rates) / 1e9, 1),
        "mfu": round(mfu, 4),
        "mfu_causal": round(mfu * model_flops_per_token(m, a.seq_len, causal=True) / flops_per_token, 4),
        "mfu_goal": GOAL_MFU, "meets_goal": mfu >= GOAL_MFU,
        "compile_seconds": round(compile_seconds, 1),
        "dropped_fraction": float(metrics["dropped_fraction"]),
        **({"time_share": time_share(step, state, batch)} if a.breakdown else {}),
    }))


if __name__ == "__main__":
    main()
