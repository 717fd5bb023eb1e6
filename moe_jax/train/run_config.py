"""A workdir's resolved config, and the check that a rerun continues the same run.

The first run writes <workdir>/config.json. A rerun compares its config with it before
anything is read, compiled or moved:

  - a field that changes parameter shapes, the optimizer state's structure, the data
    stream or the training itself (model shapes, data, seed, batch, optimizer, the job's
    own settings) stops the run with `ConfigMismatchError`, naming every such field and
    both values, and leaves every file of the workdir as it was;
  - the fields of `SAFE_TO_CHANGE` (steps, evaluation, logging, checkpoint cadence, the
    mesh, the data's location) may change: the change is logged and config.json updated.

A checkpoint that fails its seal or cannot be read for another reason is corruption
(moe_jax.train.checkpoint); a different config is not.
"""

from __future__ import annotations

import json
import os

import jax
import ml_collections

from moe_jax.models.config import ConfigError

RUN_CONFIG_FILE = "config.json"

# Dotted field names, or prefixes ending in ".", whose change a resumed run absorbs.
SAFE_TO_CHANGE = (
    "train.steps", "train.log_every", "train.checkpoint_every", "train.keep_checkpoints",
    "train.async_checkpoint", "train.progress_bar",
    "eval.", "mesh.", "data.data_dir", "data.read_threads",
    # Execution choices that give the same parameters and the same numbers' meaning.
    "model.dispatch", "model.capacity_factor", "model.remat_policy",
    # "Follow train.steps" stays that when the steps grow.
    "optimizer.total_steps",
)
# Sections of a feature that is off unless enabled: a run recorded before its config had
# the section continues when the section arrives switched off (nothing it computes changes).
OPTIONAL_SECTIONS = ("watermark", "dp")


class ConfigMismatchError(ConfigError):
    """A rerun's config differs from the workdir's in fields that a resume cannot absorb."""

    def __init__(self, workdir: str, differences: list[tuple[str, object, object]]):
        self.field = differences[0][0]
        self.differences = differences
        listed = "; ".join(f"`{k}` = {new!r} (the run in the workdir has {old!r})"
                           for k, old, new in differences[:8])
        if len(differences) > 8:
            listed += f"; and {len(differences) - 8} more"
        ValueError.__init__(self, f"{workdir} holds a run of another config: {listed}. Nothing in "
                                  f"the workdir was changed; use a new --workdir, or the run's values.")


def flatten(config, prefix: str = "") -> dict:
    """A config (ConfigDict or plain dict from JSON) -> {dotted name: JSON-comparable value}."""
    items = config.items() if hasattr(config, "items") else ()
    out = {}
    for key, value in items:
        name = f"{prefix}{key}"
        if isinstance(value, (dict, ml_collections.ConfigDict)):
            out.update(flatten(value, name + "."))
        else:
            out[name] = json.loads(json.dumps(value, default=str))  # tuples -> lists, as on disk
    return out


# Fields added to configs after runs were recorded without them, with the value that an
# absent field always meant: a workdir recorded before the field existed continues with it.
ADDED_FIELDS = {"optimizer.schedule": "cosine", "optimizer.decay_fraction": 0.2,
                "data.curriculum": 0.0, "data.difficulty.fixed_width": False}


def is_safe(name: str) -> bool:
    return any(name == s or (s.endswith(".") and name.startswith(s)) for s in SAFE_TO_CHANGE)


def _added_switched_off(old: dict, new: dict) -> set:
    """Fields of OPTIONAL_SECTIONS that `new` has, `old` lacks entirely, and that are off."""
    added = set()
    for section in OPTIONAL_SECTIONS:
        prefix = section + "."
        if new.get(prefix + "enabled") is False and not any(k.startswith(prefix) for k in old):
            added |= {k for k in new if k.startswith(prefix)}
    return added


def differences(old: dict, new: dict) -> tuple[list, list]:
    """-> (unsafe, safe) lists of (field, old value, new value) between two flat configs."""
    unsafe, safe = [], []
    new = {k: v for k, v in new.items() if k not in _added_switched_off(old, new)}
    for name in sorted(set(old) | set(new)):
        a, b = (config.get(name, ADDED_FIELDS.get(name, "<absent>")) for config in (old, new))
        if a != b:
            (safe if is_safe(name) else unsafe).append((name, a, b))
    return unsafe, safe


def read(workdir: str) -> dict | None:
    path = os.path.join(workdir, RUN_CONFIG_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def write(workdir: str, config) -> None:
    """config.json, written whole and renamed into place (process 0 only)."""
    if jax.process_index() != 0:
        return
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, RUN_CONFIG_FILE)
    with open(path + ".tmp", "w") as f:
        json.dump(config.to_dict() if hasattr(config, "to_dict") else config, f, indent=2,
                  sort_keys=True, default=str)
    os.replace(path + ".tmp", path)


def check_and_record(config, workdir: str, log=print) -> None:
    """Refuse a config that cannot continue the run in `workdir` (before touching it),
    log the safe changes, and record the config."""
    recorded = read(workdir)
    if recorded is not None:
        unsafe, safe = differences(flatten(recorded), flatten(config))
        if unsafe:
            raise ConfigMismatchError(workdir, unsafe)
        if not safe:
            return
        log("continuing with changed " + ", ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in safe))
    write(workdir, config)
