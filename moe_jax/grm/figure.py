"""The GRM figures: the inference-time scaling curve (best-response accuracy against k
samples) and best-of-n over a policy's own answers."""

from __future__ import annotations

import re

from moe_jax.train.figures import new_axes, save


def plot_scaling(results: dict, path: str, title: str = "GRM inference-time scaling"):
    """Voting@k and MetaRM@k against k (log2 axis), after RFT and after RFT + RL, with
    the greedy and random-pick levels as horizontal lines. Writes a PNG to `path`."""
    fig, ax = new_axes()
    styles = {"rft": ("tab:blue", "after RFT"), "rft_rl": ("tab:red", "after RFT + RL")}
    for stage, (color, label) in styles.items():
        if stage not in results:
            continue
        table = results[stage]
        ks = sorted(int(m.group(1)) for key in table if (m := re.fullmatch(r"voting@(\d+)", key)))
        ax.plot(ks, [table[f"voting@{k}"] for k in ks], "o-", color=color,
                label=f"Voting@k, {label}")
        ax.plot(ks, [table[f"metarm@{k}"] for k in ks], "s--", color=color,
                label=f"MetaRM@k, {label}")
        ax.axhline(table["greedy"], color=color, linestyle=":", linewidth=1,
                   label=f"greedy, {label}")
    first = results.get("rft") or results["rft_rl"]
    ax.axhline(first["random"], color="gray", linewidth=1, label="random pick")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k (sampled GRM trajectories)")
    ax.set_ylabel("held-out best-response accuracy")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="lower right")
    return save(fig, path)


def plot_best_of_n(best: dict, path: str, title: str = "Best-of-n with the GRM"):
    """Held-out task accuracy of each way to answer from the policy's n samples (the
    `best_of_n` entry of the pipeline's results): random pick, the policy's greedy answer
    where measured, the GRM's pick and the oracle (pass@n). Writes a PNG to `path`."""
    fig, ax = new_axes(figsize=(5, 3.5))
    names = [("random", "random pick"), ("greedy", "policy greedy"), ("grm", "GRM pick"),
             ("oracle", f"oracle (pass@{best['n']})")]
    names = [(key, label) for key, label in names if key in best]
    colors = {"grm": "tab:red", "oracle": "gray"}
    bars = ax.bar([label for _, label in names], [best[key] for key, _ in names],
                  color=[colors.get(key, "tab:blue") for key, _ in names])
    for bar, (key, _) in zip(bars, names):
        ax.annotate(f"{best[key]:.1%}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel(f"held-out accuracy, {best['problems']} problems")
    ax.set_title(f"{title} (n = {best['n']})")
    return save(fig, path)
