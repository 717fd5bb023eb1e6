"""Orbax checkpoints that resume exactly and never trust a damaged file.

Layout under `<workdir>/checkpoints/`:

    <step>/state/...        TrainState (params, optimizer state, step, router biases)
    <step>/data/...         the input iterator's state (JSON), so batches continue exactly
    <step>/extra/...        JSON: anything else the loop needs (e.g. the base rng seed)
    checksums/<step>.json   sha256 of every file of <step>, written after it is final

Restoring walks from the newest step down. A step whose files do not match their
checksums, or that orbax cannot read, is reported and moved to `<workdir>/corrupt/`
(out of the manager's sight, so no later save is mistaken for it and the older good
checkpoints are never touched), and the next older step is tried.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from typing import Any

import jax
import orbax.checkpoint as ocp


CHECKPOINT_DIR = "checkpoints"
CHECKSUM_DIR = "checksums"


def _file_digests(step_dir: str) -> dict[str, str]:
    digests = {}
    for root, _, files in os.walk(step_dir):
        for name in sorted(files):
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                digests[os.path.relpath(path, step_dir)] = hashlib.sha256(f.read()).hexdigest()
    return digests


class CorruptCheckpointError(RuntimeError):
    pass


class CheckpointMismatchError(ValueError):
    """A sound checkpoint of another model: parameters of other shapes or names. Not
    corruption: nothing is moved."""


def _barrier(name: str) -> None:
    """Every process waits here for the others (nothing on a single process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils  # the supported cross-process barrier

        multihost_utils.sync_global_devices(name)


def _flat_shapes(tree, prefix=()) -> dict[tuple, tuple]:
    """Nested dicts (of arrays, ShapeDtypeStructs or orbax metadata) -> {path: shape}."""
    if isinstance(tree, dict) or hasattr(tree, "items"):
        out = {}
        for key, value in tree.items():
            out.update(_flat_shapes(value, prefix + (str(key),)))
        return out
    return {prefix: tuple(getattr(tree, "shape", ()))}


class Checkpointer:
    """Save/restore (state, data iterator state, extra JSON) every `every` steps, keep `keep`."""

    def __init__(self, workdir: str, keep: int = 3, async_save: bool = True, log=print):
        self.directory = os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))
        self.corrupt_dir = os.path.abspath(os.path.join(workdir, "corrupt"))
        self.keep, self.async_save, self.log = keep, async_save, log
        self._pending: int | None = None
        os.makedirs(os.path.join(self.directory, CHECKSUM_DIR), exist_ok=True)
        self._open()

    def _open(self):
        options = ocp.CheckpointManagerOptions(
            max_to_keep=self.keep, enable_async_checkpointing=self.async_save, create=True,
            step_name_format=ocp.step.standard_name_format())
        # Handlers named up front, so that a step's metadata reads before any save or
        # restore (the parameter-shape check of restore_latest reads it first).
        self.manager = ocp.CheckpointManager(
            self.directory, options=options,
            item_handlers={"state": ocp.StandardCheckpointHandler(),
                           "data": ocp.JsonCheckpointHandler(), "extra": ocp.JsonCheckpointHandler()})

    def _checksum_path(self, step: int) -> str:
        return os.path.join(self.directory, CHECKSUM_DIR, f"{step}.json")

    def _finish_pending(self):
        """Wait for the in-flight save, then seal it with checksums. On several processes
        every one has written its shards before process 0, alone, seals the step (on a
        shared filesystem; where each host has its own disk it seals what it sees)."""
        if self._pending is None:
            return
        self.manager.wait_until_finished()
        _barrier("moe_jax: checkpoint written")
        step_dir = os.path.join(self.directory, str(self._pending))
        if jax.process_index() == 0 and os.path.isdir(step_dir):
            tmp = self._checksum_path(self._pending) + ".tmp"
            with open(tmp, "w") as f:
                json.dump(_file_digests(step_dir), f)
            os.replace(tmp, self._checksum_path(self._pending))
        self._pending = None
        if jax.process_index() == 0:
            self._drop_stale_checksums()
        _barrier("moe_jax: checkpoint sealed")

    def _drop_stale_checksums(self):
        kept = {str(s) for s in self.manager.all_steps()}
        for name in os.listdir(os.path.join(self.directory, CHECKSUM_DIR)):
            if name.endswith(".json") and name[:-5] not in kept:
                os.remove(os.path.join(self.directory, CHECKSUM_DIR, name))

    def save(self, step: int, state, data_state: dict | None, extra: dict | None = None):
        self._finish_pending()
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(data_state or {}),
            extra=ocp.args.JsonSave(extra or {})))
        self._pending = step
        if not self.async_save:
            self._finish_pending()

    def close(self):
        if self.manager is None:
            return
        self._finish_pending()
        self.manager.close()
        self.manager = None

    def _verify(self, step: int):
        path = self._checksum_path(step)
        if not os.path.exists(path):
            return  # saved but not sealed (killed in between): orbax's own checks decide
        with open(path) as f:
            expected = json.load(f)
        actual = _file_digests(os.path.join(self.directory, str(step)))
        missing = sorted(set(expected) - set(actual))
        changed = sorted(k for k in expected if k in actual and actual[k] != expected[k])
        if missing or changed:
            raise CorruptCheckpointError(
                f"missing files {missing[:5]}" if missing else f"files changed since saved: {changed[:5]}")

    def _quarantine(self, step: int, reason: str):
        """Move a corrupt step out of the manager's sight (process 0; every process has
        found the same damage in the shared files and waits for the move)."""
        target = os.path.join(self.corrupt_dir, f"{step}-{int(time.time())}")
        _barrier(f"moe_jax: step {step} found corrupt")
        if jax.process_index() == 0:
            os.makedirs(self.corrupt_dir, exist_ok=True)
            shutil.move(os.path.join(self.directory, str(step)), target)
            if os.path.exists(self._checksum_path(step)):
                os.remove(self._checksum_path(step))
            self.log(f"checkpoint at step {step} is corrupt ({reason}); moved to {target}, "
                     f"falling back to the previous one")
        _barrier(f"moe_jax: step {step} set aside")
        self.manager.close()
        self._open()

    def read_state(self, step: int | None = None):
        """-> (the saved state as a nested dict of arrays, its step) of `step`, or of the
        newest step whose seal verifies and that reads back; None when there is none.

        For readers of a finished run: no template is needed (the tree is read as it was
        saved, whatever the optimizer), and nothing is moved or deleted; a step that does
        not read raises CorruptCheckpointError naming every step tried and why."""
        self._finish_pending()
        steps = [step] if step is not None else sorted(self.manager.all_steps(), reverse=True)
        if step is not None and step not in self.manager.all_steps():
            raise FileNotFoundError(f"no checkpoint at step {step} in {self.directory}")
        errors = []
        for candidate in steps:
            try:
                self._verify(candidate)
                restored = self.manager.restore(candidate, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(
                        None, fallback_sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0]))))
                return dict(restored["state"]), candidate
            except Exception as error:  # noqa: BLE001 - reported below, never hidden
                errors.append(f"step {candidate}: {type(error).__name__}: {str(error)[:200]}")
        if errors:
            raise CorruptCheckpointError(f"no checkpoint in {self.directory} reads back: "
                                         f"{'; '.join(errors)}")
        return None

    def _mismatch(self, step: int, abstract_state) -> str | None:
        """How the saved parameters differ from `abstract_state`'s, or None. A step whose
        metadata cannot be read is left to the restore (and counted corrupt there)."""
        try:
            saved = self.manager.item_metadata(step)["state"]
        except Exception:  # noqa: BLE001 - unreadable metadata: the restore will say why
            return None
        saved = getattr(saved, "tree", saved)
        if not hasattr(saved, "get"):
            return None
        problems = []
        for name in ("params", "router_bias"):
            part = abstract_state.get(name) if isinstance(abstract_state, dict) else \
                getattr(abstract_state, name, None)
            want = _flat_shapes(part or {})
            have = _flat_shapes(saved.get(name, {}) or {}) if hasattr(saved, "get") else {}
            for path in sorted(set(want) | set(have)):
                if want.get(path) != have.get(path):
                    shown = "/".join((name,) + path)
                    problems.append(f"{shown}: checkpoint {list(have[path]) if path in have else 'absent'}, "
                                    f"model {list(want[path]) if path in want else 'absent'}")
        return "; ".join(problems[:5]) + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else "") \
            if problems else None

    def restore_latest(self, abstract_state, quarantine: bool = True) -> tuple[Any, dict, dict] | None:
        """-> (state, data_state, extra) of the newest readable checkpoint, or None.

        A step that fails its seal or cannot be read is moved to corrupt/ (or, with
        quarantine=False, reported and left in place) and the next older one tried. A
        step whose parameters have other shapes than `abstract_state`'s is a sound
        checkpoint of another config: CheckpointMismatchError, and nothing is moved.
        """
        self._finish_pending()
        errors = []
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                self._verify(step)
            except CorruptCheckpointError as error:
                if quarantine:
                    self._quarantine(step, f"seal: {error}")
                else:
                    errors.append(f"step {step}: {error}")
                continue
            mismatch = self._mismatch(step, abstract_state)
            if mismatch:
                raise CheckpointMismatchError(
                    f"the checkpoint at step {step} in {self.directory} is of another model "
                    f"({mismatch}); nothing was moved: use the run's own config or a new workdir")
            try:
                restored = self.manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state),
                    data=ocp.args.JsonRestore(),
                    extra=ocp.args.JsonRestore()))
                state = restored["state"]
                jax.block_until_ready(state)
                return state, dict(restored["data"] or {}), dict(restored["extra"] or {})
            except Exception as error:  # noqa: BLE001 - any failure to read means corrupt
                reason = f"{type(error).__name__}: {str(error)[:200]}"
                if quarantine:
                    self._quarantine(step, reason)
                else:
                    errors.append(f"step {step}: {reason}")
        if errors:
            raise CorruptCheckpointError(f"no checkpoint in {self.directory} matches the model "
                                         f"or reads back: {'; '.join(errors)}")
        return None
