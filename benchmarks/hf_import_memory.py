"""Peak host memory of importing a Hugging Face DeepSeek checkpoint, relative to its size.

Prints ONE JSON line. Builds a random DeepSeek-V3-shaped checkpoint of about 300 MB
(few layers, wide: bfloat16 safetensors shards + index + config.json, written with
numpy and safetensors), then imports it in fresh subprocesses and measures the peak
RSS increase (the peak after the import minus the peak once all modules are loaded),
divided by the checkpoint's bytes on disk (peak = VmHWM, see `peak_rss_bytes`):

- "host": `import_hf` returning numpy arrays (the default),
- "device_put": `import_hf(shardings=...)` placing every leaf on a jax device as it
  completes (on CPU the device buffer is host memory too, so both copies count).

Tensors are read one at a time into preallocated (stacked) leaves, so the increase is
the result itself plus about one tensor in flight: the limit is 1.5x.

    python benchmarks/hf_import_memory.py                  # ~300 MB, bfloat16
    python benchmarks/hf_import_memory.py --moe-layers 4   # ~500 MB
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

LIMIT = 1.5


def synthetic_model_config(moe_layers: int):
    from moe_jax.models.config import base_model_config

    m = base_model_config()
    m.update(vocab_size=16384, d_model=1024, num_layers=1 + moe_layers, num_dense_layers=1, dense_ffn=2816,
             num_heads=8, q_lora_rank=384, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64,
             v_head_dim=128, num_experts=32, num_shared_experts=1, expert_ffn=512, top_k=4, n_group=4,
             topk_group=2, mtp_depth=0, param_dtype="bfloat16", dtype="bfloat16")
    return m


def build_checkpoint(directory: str, moe_layers: int, shard_bytes: int = 100 * 10**6) -> int:
    """Random bfloat16 checkpoint; returns the bytes of its tensors."""
    import ml_dtypes
    import numpy as np
    from safetensors.numpy import save_file

    from moe_jax.interop.hf_config import hf_config_from_model
    from moe_jax.interop.hf_names import checkpoint_slots

    m = synthetic_model_config(moe_layers)
    rng = np.random.default_rng(0)
    shard, shard_size, weight_map, total, files = {}, 0, {}, 0, []

    def flush():
        nonlocal shard, shard_size
        name = f"model-{len(files) + 1:05d}.safetensors"
        save_file(shard, os.path.join(directory, name), metadata={"format": "pt"})
        weight_map.update({k: name for k in shard})
        files.append(name)
        shard, shard_size = {}, 0

    for slot in checkpoint_slots(m, "deepseek_v3"):
        dtype = np.float32 if slot.hf_name.endswith("e_score_correction_bias") else ml_dtypes.bfloat16
        value = (rng.standard_normal(slot.hf_shape, np.float32) * 0.02).astype(dtype)
        shard[slot.hf_name] = value
        shard_size += value.nbytes
        total += value.nbytes
        if shard_size >= shard_bytes:
            flush()
    if shard:
        flush()
    with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(hf_config_from_model(m, torch_dtype="bfloat16"), f)
    return total


def peak_rss_bytes() -> int:
    """This process's peak resident set size.

    Linux: VmHWM of /proc/self/status. Not ru_maxrss: after fork+exec it starts at the
    *parent's* peak (Linux carries the pre-exec high-water mark into the signal struct),
    so a parent that just wrote a 300 MB checkpoint would hide most of the child's growth.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def child(directory: str, mode: str):
    """Runs in a fresh process: import, report RSS figures as JSON on stdout."""
    import jax
    import numpy as np

    from moe_jax.interop.hf import import_hf

    sharding = None
    if mode == "device_put":
        sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])  # backend up before the baseline
    baseline = peak_rss_bytes()
    start = time.time()
    result = import_hf(directory, param_dtype="bfloat16", shardings=sharding, progress=False)
    seconds = time.time() - start
    peak = peak_rss_bytes()
    result_bytes = sum(np.asarray(x).nbytes if sharding is None else x.nbytes
                       for x in jax.tree.leaves((result.params, result.router_bias)))
    print(json.dumps({"peak_increase_bytes": peak - baseline, "result_bytes": result_bytes,
                      "seconds": round(seconds, 2)}))


def measure(directory: str, mode: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", directory, "--mode", mode],
                         check=True, capture_output=True, text=True,
                         env=dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu")))
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--moe-layers", type=int, default=2, help="MoE layers (~100 MB each)")
    parser.add_argument("--dir", default=None, help="build the checkpoint here (kept); default a temp dir")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="host", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.mode)
        return 0

    directory = args.dir or tempfile.mkdtemp(prefix="hf_import_memory-")
    try:
        os.makedirs(directory, exist_ok=True)
        checkpoint_bytes = build_checkpoint(directory, args.moe_layers)
        runs = {mode: measure(directory, mode) for mode in ("host", "device_put")}
    finally:
        if args.dir is None:
            shutil.rmtree(directory, ignore_errors=True)
    ratios = {mode: r["peak_increase_bytes"] / checkpoint_bytes for mode, r in runs.items()}
    passed = all(r < LIMIT for r in ratios.values())
    print(json.dumps({
        "benchmark": "hf_import_memory", "checkpoint_bytes": checkpoint_bytes,
        "peak_bytes": runs["host"]["peak_increase_bytes"], "ratio": round(ratios["host"], 3),
        "device_put_peak_bytes": runs["device_put"]["peak_increase_bytes"],
        "device_put_ratio": round(ratios["device_put"], 3),
        "result_bytes": runs["host"]["result_bytes"], "limit": LIMIT, "pass": passed,
        "import_seconds": runs["host"]["seconds"], "device_put_import_seconds": runs["device_put"]["seconds"]}))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
