"""The README main job's training tokens/s in this checkout against another checkout of
the project (an older revision, a branch), interleaved A B A B so that a machine that
speeds up or slows down during the measurement affects both alike.

    git worktree add /tmp/baseline <revision>
    python benchmarks/main_job_speed.py --baseline /tmp/baseline [--rounds 2 --steps 300]

Each run is `python -m moe_jax.main` on experiments/pretrain_arith.py:tiny, one device,
evaluation off, checkpoints as the job writes them. Tokens/s is taken between step 50
and the last logged step, from metrics.jsonl, so dataset generation and compilation are
left out. Prints one JSON line: the median of each side, their ratio (this checkout over
the baseline) and whether it is within LIMIT of the baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIMIT = 0.95  # this checkout's tokens/s / the baseline's, at least
FROM_STEP = 50


def run_once(tree: str, workdir: str, data_dir: str, steps: int) -> float:
    env = dict(os.environ, PYTHONPATH=tree)
    env.pop("XLA_FLAGS", None)  # one device, as the README runs it
    command = [sys.executable, "-m", "moe_jax.main",
               f"--config={tree}/experiments/pretrain_arith.py:tiny", f"--workdir={workdir}",
               f"--config.train.steps={steps}", "--config.optimizer.total_steps=1800",
               "--config.train.log_every=25", "--config.eval.every=0",
               "--config.eval.final_num_examples=8", "--config.train.progress_bar=False",
               f"--config.data.data_dir={data_dir}"]
    out = subprocess.run(command, env=env, capture_output=True, text=True, cwd=tempfile.gettempdir())
    if out.returncode != 0:
        raise SystemExit(f"{tree}: the main job failed:\n{out.stderr[-2000:]}")
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [r for r in map(json.loads, f) if "tokens_per_second" in r]
    tokens_per_step = 16 * 128  # the tiny recipe's batch x sequence length
    # Each record's rate is cumulative from the start of training: recover elapsed time.
    elapsed = {r["step"]: r["step"] * tokens_per_step / r["tokens_per_second"] for r in records}
    last = max(elapsed)
    if last <= FROM_STEP or FROM_STEP not in elapsed:
        raise SystemExit(f"--steps must be above {FROM_STEP} and a multiple of 25")
    return (last - FROM_STEP) * tokens_per_step / (elapsed[last] - elapsed[FROM_STEP])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", required=True, help="another checkout of the project")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    rates = {"this": [], "baseline": []}
    with tempfile.TemporaryDirectory(prefix="main_job_speed_") as scratch:
        data_dir = os.path.join(scratch, "data")
        for i in range(args.rounds):
            for side, tree in (("baseline", os.path.abspath(args.baseline)), ("this", HERE)):
                rates[side].append(run_once(tree, os.path.join(scratch, f"{side}{i}"), data_dir, args.steps))
    this, base = statistics.median(rates["this"]), statistics.median(rates["baseline"])
    print(json.dumps({"benchmark": "main_job_speed", "tokens_per_s": round(this),
                      "baseline_tokens_per_s": round(base), "runs": {k: [round(x) for x in v] for k, v in rates.items()},
                      "ratio": round(this / base, 4), "limit": LIMIT, "ok": this / base >= LIMIT}))


if __name__ == "__main__":
    main()
