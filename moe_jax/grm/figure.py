"""The inference-time scaling curve: best-response accuracy against k samples."""

from __future__ import annotations

import re

from moe_jax.analysis.figures import new_axes, save


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
