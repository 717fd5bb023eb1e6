"""The GRPO learning curve from a run's metrics.jsonl: held-out exact match and the
training reward against wall-clock minutes (the axis the CPU budget is stated in).

    python -m moe_jax.rl.figure runs/grpo experiments/figures/grpo_reasoning.png
"""

from __future__ import annotations

import sys

from moe_jax.train.figures import new_axes, save
from moe_jax.train.metrics import read_metrics


def curves(workdir: str) -> dict[str, list[tuple[float, float]]]:
    """-> {"eval": [(minutes, exact match)], "reward": [(minutes, mean reward)],
    "correct": [...]}; evaluations are placed at the time of the step they follow."""
    records = read_metrics(workdir)
    minutes = {0: 0.0}
    out = {"eval": [], "reward": [], "correct": []}
    for step in sorted(records):
        r = records[step]
        if "elapsed_seconds" in r:
            minutes[step] = r["elapsed_seconds"] / 60
        t = minutes.get(step, max(minutes.values()))
        if "eval/exact_match" in r:
            out["eval"].append((t, r["eval/exact_match"]))
        for key in ("reward", "correct"):
            if key in r:
                out[key].append((t, r[key]))
    return out


def plot_grpo(workdir: str, path: str, title: str = "GRPO from the SFT model") -> str:
    """Write a PNG of held-out exact match (and the smoothed training accuracy)."""
    c = curves(workdir)
    fig, ax = new_axes()
    if c["correct"]:
        t, y = zip(*c["correct"])
        window = max(1, len(y) // 30)
        smooth = [sum(y[max(0, i - window + 1):i + 1]) / len(y[max(0, i - window + 1):i + 1])
                  for i in range(len(y))]
        ax.plot(t, smooth, color="tab:gray", linewidth=1,
                label=f"sampled responses correct (train, mean of {window} steps)")
    t, y = zip(*c["eval"])
    ax.plot(t, y, "o-", color="tab:red", label="held-out exact match (greedy)")
    ax.set_xlabel("minutes of GRPO")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right")
    return save(fig, path)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m moe_jax.rl.figure WORKDIR OUT.png")
    print(plot_grpo(sys.argv[1], sys.argv[2]))
