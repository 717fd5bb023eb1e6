"""An experiment's `sweep()` x seeds as a list of runs, each a workdir and a command.

    runs = plan_sweep("experiments/pretrain_arith.py:tiny", "runs/ablation", seeds=3,
                      overrides=["train.steps=600"])
    runs[0].name     -> "router=softmax,num_experts=4/seed=0"
    runs[0].command  -> [python, -m, moe_jax.main, --config=..., --workdir=runs/ablation/...,
                         --config.train.steps=600, --config.model.router=softmax, ...,
                         --config.train.seed=0]

A grid point is one dict of `sweep()` (or of `--grid FIELD=V1,V2`, which replaces it) ("config.model.router": "softmax", ...); its
directory is named by the fields that vary across the grid (last name component,
`field=value`, joined by commas), so a listing of the root reads as the ablation. The
seed is `train.seed`: the initialisation and the data order. `data.seed` stays the
experiment's: it picks which problems are held out, and every run of a sweep is
measured on the same held-out problems, so two grid points compare on paired data
rather than on two samples of the task.

Every run's config is loaded and validated here, so a bad override or a grid point the
model rejects fails before anything is launched.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import sys

from moe_jax.config import bare_field, load_experiment
from moe_jax.models.config import ConfigError

SEED_FIELD = "train.seed"
_UNSAFE = re.compile(r"[^A-Za-z0-9._+=,-]")


@dataclasses.dataclass(frozen=True)
class Run:
    spec: str  # the experiment, path.py:variant
    point: str  # the grid point's directory name, e.g. "router=softmax,num_experts=4"
    seed: int
    workdir: str
    overrides: tuple[str, ...]  # "field=value", as python -m moe_jax.main takes them
    command: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{self.point}/seed={self.seed}"

    def shell(self, python: str = "python") -> str:
        """The command as one shell line, with `python` for the interpreter (what a cluster
        scheduler or pod queue takes; its environment has its own)."""
        return shlex.join((python,) + self.command[1:])


def value_text(value) -> str:
    """A grid value as an override's text: strings as they are, tuples and lists in
    Python syntax (how moe_jax.config parses them back), everything else by repr."""
    if isinstance(value, str):
        return value
    if isinstance(value, (tuple, list)):
        return repr(tuple(value))
    return repr(value)


def _name_value(value) -> str:
    if isinstance(value, (tuple, list)):
        return "+".join(_name_value(v) for v in value) or "none"
    text = value if isinstance(value, str) else repr(value)
    return _UNSAFE.sub("_", text)


def _field(key: str) -> str:
    """"config.model.router" -> "model.router" (sweep() keys are command-line flags)."""
    if not key.startswith("config."):
        raise ConfigError(f"sweep() key {key!r}", None, "a flag of the form 'config.<field>', "
                          "e.g. 'config.model.num_experts'")
    return key[len("config."):]


def point_names(points: list[dict]) -> list[str]:
    """Directory names for grid points: the fields that vary, by their shortest
    unambiguous name. Points that differ in no field are numbered."""
    fields = list(dict.fromkeys(_field(k) for p in points for k in p))
    varying = [f for f in fields
               if len({repr(p.get("config." + f, "<unset>")) for p in points}) > 1]
    shown = varying or fields

    def short(field):
        parts = field.split(".")
        for n in range(1, len(parts) + 1):
            tail = ".".join(parts[-n:])
            if sum(1 for f in shown if f == tail or f.endswith("." + tail)) == 1:
                return tail
        return field

    names = []
    for point in points:
        items = [f"{short(f)}={_name_value(point['config.' + f])}" for f in shown if "config." + f in point]
        names.append(",".join(items) or "base")
    if len(set(names)) < len(names):
        names = [f"{i:03d}-{n}" for i, n in enumerate(names)]
    return names


def split_values(text: str) -> list[str]:
    """"2e-3,3e-3" -> ["2e-3", "3e-3"]; commas inside brackets or quotes stay:
    "('a','b'),('c',)" -> ["('a','b')", "('c',)"]."""
    values, depth, quote, current = [], 0, "", ""
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 0:
            values.append(current)
            current = ""
            continue
        current += char
    return values + [current]


def grid_points(assignments) -> list[dict]:
    """--grid FIELD=V1,V2 ... (each repeatable) -> their cartesian product as sweep()
    points; the values are text, parsed to each field's type as overrides are."""
    points = [{}]
    for assignment in assignments:
        field, sep, text = assignment.partition("=")
        if not sep or not field.strip() or not text.strip():
            raise ValueError(f"--grid {assignment!r}: expected FIELD=VALUE1,VALUE2,...")
        values = [v.strip() for v in split_values(text)]
        key = "config." + bare_field(field.strip())
        points = [dict(p, **{key: v}) for p in points for v in values]
    return points


def sweep_points(module, spec: str, grid=()) -> list[dict]:
    if grid:
        return grid_points(grid)
    if not hasattr(module, "sweep"):
        raise AttributeError(f"{spec}: the experiment file defines no sweep()")
    points = list(module.sweep())
    if not points or not all(isinstance(p, dict) for p in points):
        raise ValueError(f"{spec}: sweep() should return a non-empty list of dicts "
                         f"{{'config.<field>': value}}")
    return points


def seed_list(seeds) -> list[int]:
    """--seeds: N (seeds 0..N-1) or a list "1,2" (those seeds)."""
    if isinstance(seeds, int):
        values = list(range(seeds))
    else:
        text = str(seeds).strip()
        try:
            values = list(range(int(text))) if "," not in text else [int(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise ValueError(f"--seeds {seeds!r}: expected a count N or a list of seeds like 1,2") from None
    if not values or len(set(values)) != len(values) or min(values) < 0:
        raise ValueError(f"--seeds {seeds!r}: expected at least one seed, each once, none negative")
    return values


def plan_sweep(spec: str, root: str, *, seeds=1, overrides=(), grid=(),
               python: str | None = None) -> list[Run]:
    """The runs of `spec`'s sweep() (or of `grid`, FIELD=V1,V2,... assignments whose
    product replaces it) x the seeds (train.seed; `seeds`: a count N for 0..N-1, or a
    list) under `root`; `overrides` ("field=value") apply to every run and may not set a
    field the grid or the seed sets.
    Runs whose config reads its dataset from the workdir (data.data_dir empty) share
    <root>/data instead."""
    seeds = seed_list(seeds)
    overrides = tuple(bare_field(o.strip()) for o in overrides)  # written into --config.<field> flags
    module, base = load_experiment(spec, overrides)
    points = sweep_points(module, spec, grid)
    given = {o.partition("=")[0].strip() for o in overrides}
    if "train" not in base or "seed" not in base.train:
        raise ConfigError(SEED_FIELD, None, "a field of the experiment's config (the sweep's seed)")
    if "data" in base and base.data.get("data_dir", None) == "" and "data.data_dir" not in given:
        # One copy of the dataset for every run (generated by the first that needs it;
        # moe_jax.data.tfds_builders serialises concurrent generation), not one per workdir.
        overrides = (*overrides, f"data.data_dir={os.path.join(root, 'data')}")
    python = python or sys.executable
    runs = []
    for name, point in zip(point_names(points), points):
        grid = [f"{_field(k)}={value_text(v)}" for k, v in point.items()]
        fields = [g.partition("=")[0] for g in grid]
        clash = (given & (set(fields) | {SEED_FIELD})) or ({SEED_FIELD} & set(fields))
        if clash:
            raise ConfigError(sorted(clash)[0], None, "a field the sweep leaves alone: the grid "
                              "or --seeds sets it for every run (--seeds 1,2 picks the seeds)")
        for seed in seeds:
            run_overrides = (*overrides, *grid, f"{SEED_FIELD}={seed}")
            load_experiment(spec, run_overrides)  # each run's config validates before any starts
            workdir = os.path.join(root, name, f"seed={seed}")
            command = (python, "-m", "moe_jax.main", f"--config={spec}", f"--workdir={workdir}",
                       *(f"--config.{o}" for o in run_overrides))
            runs.append(Run(spec=spec, point=name, seed=seed, workdir=workdir, overrides=run_overrides,
                            command=command))
    return runs
