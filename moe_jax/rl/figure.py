"""Figures and tables of GRPO runs from their metrics.jsonl.

    python -m moe_jax.rl.figure runs/grpo experiments/figures/grpo_reasoning.png
    python -m moe_jax.rl.figure --routing runs/grpo experiments/figures/grpo_routing.png
    python -m moe_jax.rl.figure --compare experiments/figures/grpo_vs_gspo.png \
        GRPO=runs/a/s0,runs/a/s1,runs/a/s2 GSPO=runs/b/s0,runs/b/s1,runs/b/s2 [--steps 50,100]
    python -m moe_jax.rl.figure --compare experiments/figures/moe_rl.png runs/moe_rl  # a sweep

The first is the learning curve: held-out exact match and the training reward against
wall-clock minutes (the axis the CPU budget is stated in). `--routing` draws the
router's health per MoE layer against the GRPO step (moe_jax/rl/router_health.py: the
fraction of tokens whose experts changed between rollout and update, routing entropy,
max/mean expert load, and how far each layer's balancing bias has moved). `--compare`
draws variants run over several seeds (held-out exact match, mean and 95% interval over
seeds, and the expert-change fraction) and prints their table in markdown; a variant is
LABEL=DIR[,DIR...] (runs, or a sweep point's seed=<n> runs), or a `moe-jax sweep` root
gives one variant per grid point.
"""

from __future__ import annotations

import argparse
import glob
import math
import os

import numpy as np

from moe_jax.train.figures import new_axes, save
from moe_jax.train.metrics import read_metrics, t_interval

ROUTING_PANELS = (("changed", "experts changed, rollout -> update"),
                  ("recomputed_changed", "experts the update's router would change"),
                  ("entropy", "routing entropy (nats)"),
                  ("max_over_mean_load", "max / mean expert load"))


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
        ax.plot(t, _smooth(y), color="tab:gray", linewidth=1,
                label=f"sampled responses correct (train, mean of {_window(y)} steps)")
    t, y = zip(*c["eval"])
    ax.plot(t, y, "o-", color="tab:red", label="held-out exact match (greedy)")
    ax.set_xlabel("minutes of GRPO")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right")
    return save(fig, path)


def _window(y) -> int:
    return max(1, len(y) // 30)


def _smooth(y):
    """Trailing mean over `_window(y)` points."""
    w = _window(y)
    return [sum(y[max(0, i - w + 1):i + 1]) / len(y[max(0, i - w + 1):i + 1]) for i in range(len(y))]


def routing_curves(workdir: str) -> dict[str, tuple[list[int], np.ndarray]]:
    """-> {name: (steps, values [steps, layers])} for each ROUTING_PANELS name and
    "bias_moved" (max over experts of |b - b at the first logged step|, per router)."""
    records = read_metrics(workdir)
    out = {}
    for name in [n for n, _ in ROUTING_PANELS] + ["bias"]:
        steps = [s for s in sorted(records) if f"routing/{name}" in records[s]]
        if steps:
            out[name] = (steps, np.array([records[s][f"routing/{name}"] for s in steps], np.float64))
    if "bias" in out:
        steps, bias = out.pop("bias")  # [steps, routers, E]
        out["bias_moved"] = (steps, np.abs(bias - bias[:1]).max(axis=-1))
    return out


def plot_router_health(workdir: str, path: str, title: str = "router health during GRPO") -> str:
    """One panel per quantity, one line per MoE layer (and one per router for the bias)."""
    c = routing_curves(workdir)
    if not c:
        raise ValueError(f"{workdir}: no routing/* metrics (a GRPO run of an MoE model logs them)")
    panels = [(n, label) for n, label in ROUTING_PANELS if n in c]
    panels.append(("bias_moved", "max |bias - bias at step 1|"))
    fig, axes = new_axes((10, 6.5), 2, math.ceil(len(panels) / 2))
    for ax, (name, label) in zip(axes.reshape(-1), panels):
        steps, values = c.get(name, ([], np.zeros((0, 0))))
        for layer in range(values.shape[1]):
            ax.plot(steps, _smooth(list(values[:, layer])), linewidth=1, label=f"layer {layer}")
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("GRPO step")
    axes.reshape(-1)[0].legend(fontsize=7)
    fig.suptitle(title)
    return save(fig, path)


def variant_figures(workdirs, steps) -> dict:
    """Seeds of one variant -> {"eval": {step: [exact match per seed]}, and the run means
    of clip_fraction, expert_changed, expert_recomputed_changed, rollout_seconds: [per seed]}."""
    out = {"eval": {s: [] for s in steps}, "clip_fraction": [], "expert_changed": [],
           "expert_recomputed_changed": [], "rollout_seconds": [], "draft_acceptance": []}
    for workdir in workdirs:
        records = read_metrics(workdir)
        for s in steps:
            if "eval/exact_match" in records.get(s, {}):
                out["eval"][s].append(records[s]["eval/exact_match"])
        for key in [k for k in out if k != "eval"]:
            # Step 1 compiles the sampler: its wall time says nothing about sampling speed.
            first = 2 if key == "rollout_seconds" else 1
            values = [r[key] for s, r in records.items() if key in r and s >= first]
            if values:
                out[key].append(float(np.mean(values)))
    return out


def variant_table(variants: dict[str, list[str]], steps) -> str:
    """Markdown: per variant, held-out exact match at `steps` (mean +- 95% interval over
    seeds), and per-run means over steps of the clip and expert-change fractions."""
    header = (["variant", "seeds"] + [f"exact match @ {s}" for s in steps]
              + ["clip fraction", "experts changed", "router would change", "rollout s/step"])
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    for label, workdirs in variants.items():
        f = variant_figures(workdirs, steps)
        cells = [label, str(len(workdirs))]
        for s in steps:
            runs = f["eval"][s]
            cells.append(_pm(runs, percent=True, n=len(workdirs)))
        cells += [_pm(f["clip_fraction"], percent=True, digits=3), _pm(f["expert_changed"], percent=True),
                  _pm(f["expert_recomputed_changed"], percent=True), _pm(f["rollout_seconds"], digits=2)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _pm(values, percent=False, digits=1, n=None) -> str:
    if not values:
        return "-"
    scale = 100 if percent else 1
    mean, half = t_interval(values)
    unit = "%" if percent else ""
    text = f"{mean * scale:.{digits}f}{unit}"
    if half is not None:
        text += f" ± {half * scale:.{digits}f}"
    if n is not None and len(values) < n:
        text += f" ({len(values)} of {n})"
    return text


def plot_variants(variants: dict[str, list[str]], path: str, title: str = "") -> str:
    """Held-out exact match per variant against the GRPO step (mean over seeds, 95% band),
    and the fraction of tokens whose experts changed between rollout and update."""
    fig, (ax_eval, ax_changed) = new_axes((11, 4.2), 1, 2)
    for label, workdirs in variants.items():
        records = [read_metrics(w) for w in workdirs]
        steps = sorted({s for r in records for s, v in r.items() if "eval/exact_match" in v})
        means, halves = zip(*[t_interval([r[s]["eval/exact_match"] for r in records
                                          if "eval/exact_match" in r.get(s, {})]) for s in steps])
        # One seed at a step has no interval: no band there.
        means, halves = np.array(means), np.array([0.0 if h is None else h for h in halves])
        line, = ax_eval.plot(steps, means, "o-", markersize=3, label=label)
        ax_eval.fill_between(steps, means - halves, means + halves, color=line.get_color(), alpha=0.15)
        changed = {}
        for r in records:
            for s, v in r.items():
                if "expert_changed" in v:
                    changed.setdefault(s, []).append(v["expert_changed"])
        if changed:
            xs = sorted(changed)
            ax_changed.plot(xs, _smooth([float(np.mean(changed[s])) for s in xs]), linewidth=1,
                            color=line.get_color(), label=label)
    ax_eval.set_xlabel("GRPO step")
    ax_eval.set_ylabel("held-out exact match (greedy)")
    ax_eval.legend(fontsize=8)
    ax_changed.set_xlabel("GRPO step")
    ax_changed.set_ylabel("tokens whose experts changed, rollout -> update")
    ax_changed.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return save(fig, path)


def _runs_in(path: str) -> list[str]:
    """A run's workdir -> [it]; a sweep point's directory -> its seed=<n> runs."""
    if os.path.exists(os.path.join(path, "metrics.jsonl")):
        return [path]
    seeds = sorted(d for d in glob.glob(os.path.join(path, "seed=*"))
                   if os.path.exists(os.path.join(d, "metrics.jsonl")))
    if not seeds:
        raise SystemExit(f"--compare: {path!r} is neither a run (no metrics.jsonl) nor a sweep "
                         f"point (no seed=<n> runs)")
    return seeds


def _variants_under(root: str) -> dict[str, list[str]]:
    """A sweep's root (or one point of it) -> {point name: its seeds' workdirs}."""
    if glob.glob(os.path.join(root, "seed=*")):
        return {os.path.basename(os.path.normpath(root)): _runs_in(root)}
    points = sorted(d for d in glob.glob(os.path.join(root, "*")) if glob.glob(os.path.join(d, "seed=*")))
    if not points:
        raise SystemExit(f"--compare: {root!r} holds no sweep points (directories of seed=<n> runs)")
    return {os.path.basename(d): _runs_in(d) for d in points}


def _parse_variants(items) -> dict[str, list[str]]:
    """LABEL=DIR[,DIR...] (runs, or a sweep point's directory), or a sweep's root alone.
    Sweep point names hold commas themselves, so a DIR that exists is taken whole."""
    variants = {}
    for item in items:
        if os.path.isdir(item):
            variants.update(_variants_under(item))
            continue
        label, sep, dirs = item.partition("=")
        if not sep or not dirs:
            raise SystemExit(f"--compare: {item!r} is not LABEL=DIR[,DIR...] or a sweep's directory")
        paths = [dirs] if os.path.isdir(dirs) else dirs.split(",")
        variants[label] = [run for path in paths for run in _runs_in(path)]
    return variants


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--routing", action="store_true", help="router health per MoE layer")
    p.add_argument("--compare", action="store_true", help="variants over seeds: figure and table")
    p.add_argument("--steps", default="50,100", help="--compare: the steps of the table's columns")
    p.add_argument("args", nargs="+", help="WORKDIR OUT.png, or with --compare OUT.png LABEL=DIRS...")
    a = p.parse_args(argv)
    if a.compare:
        variants = _parse_variants(a.args[1:])
        print(plot_variants(variants, a.args[0]))
        print(variant_table(variants, [int(s) for s in a.steps.split(",")]))
        return
    if len(a.args) != 2:
        p.error("expected WORKDIR OUT.png")
    print((plot_router_health if a.routing else plot_grpo)(*a.args))


if __name__ == "__main__":
    main()
