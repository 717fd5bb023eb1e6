"""The one training loop every job runs: steps, hooks, checkpoints, exact resume.

    trainer = Trainer(workdir, LoopSettings.from_config(config), placement, log=log)
    state = trainer.restore(state, shardings, data_iter)      # the newest good checkpoint
    state = trainer.run(state, next_batch=..., update=..., data_iter=..., evaluate=...)

A step is `batch = next_batch(step, state)` then `state, metrics = update(state, batch,
step)`: for pretraining the batch is the data pipeline's next one and the update one
jitted train step; for GRPO the batch is a rollout (sampled by the current policy) and
the update its minibatch steps. Around every step, the hooks:

    metrics     every `log_every` steps: scalars and per-layer routing arrays to
                metrics.jsonl and TensorBoard, and a progress bar with tokens/s
    non-finite  every step's loss-like scalars; a NaN or inf stops the run naming the
                step and the quantity, and nothing past the last good checkpoint is saved
    checkpoint  every `checkpoint_every` steps and at the end (state + the data
                iterator's position, so a resumed run computes exactly what an
                uninterrupted one would have)
    evaluate    every `eval_every` steps (not at the end: the job evaluates its final
                state itself)
    preemption  SIGTERM (how TPU VMs and cluster schedulers preempt): a checkpoint at the
                next step boundary on every process, then `Preempted`

A step's metrics are read only once the next step has been dispatched, so reading them
does not stall the device.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time

import jax
import numpy as np

from moe_jax.train.checkpoint import Checkpointer
from moe_jax.train.metrics import MetricsWriter, Progress
from moe_jax.train.preemption import Preempted, PreemptionWatch

# Scalars whose NaN or inf stops a run (the others, e.g. a clip fraction, can be nan by
# construction on an empty mask).
CHECKED = ("loss", "ce_loss", "mtp_loss", "balance_loss", "seq_balance_loss", "z_loss", "grad_norm",
           "objective", "kl")


class NonFiniteLossError(FloatingPointError):
    """Training produced NaN or inf; the message names the step and the quantities."""


def check_finite(step: int, scalars: dict, what: str = ""):
    bad = {k: scalars[k] for k in CHECKED if k in scalars and not math.isfinite(scalars[k])}
    if bad:
        detail = ", ".join(f"{k}={v}" for k, v in bad.items())
        raise NonFiniteLossError(
            f"{what}step {step}: non-finite {detail}; stopping without saving this state. "
            f"The last checkpoint is untouched; lower optimizer.learning_rate or check the data.")


@dataclasses.dataclass
class LoopSettings:
    steps: int
    log_every: int = 50
    checkpoint_every: int = 0  # 0: no checkpoints (the caller saves the result whole)
    keep_checkpoints: int = 3
    async_checkpoint: bool = True
    progress_bar: bool = True
    eval_every: int = 0
    tokens_per_step: int = 0  # for tokens/s

    @classmethod
    def from_config(cls, config, tokens_per_step: int = 0) -> "LoopSettings":
        t = config.train
        return cls(steps=t.steps, log_every=t.log_every, checkpoint_every=t.checkpoint_every,
                   keep_checkpoints=t.keep_checkpoints, async_checkpoint=t.async_checkpoint,
                   progress_bar=t.progress_bar, eval_every=config.eval.get("every", 0) or 0,
                   tokens_per_step=tokens_per_step)


def _routing_arrays(host: dict) -> dict:
    """Per-layer routing arrays -> lists for the JSONL (scalars are logged separately)."""
    return {k: np.asarray(v).round(5).tolist() for k, v in host.items()
            if k.startswith("routing/") and np.ndim(v) > 0}


class Trainer:
    def __init__(self, workdir: str | None, settings: LoopSettings, placement=None, *, log=print,
                 name: str = "", progress_key: str = "loss"):
        """workdir None: no checkpoints and no metrics files (a phase saved whole by its
        caller). name: prefixed to messages ("GRPO "). progress_key: the scalar the bar shows."""
        self.workdir, self.settings, self.placement, self.log = workdir, settings, placement, log
        self.name, self.progress_key = name, progress_key
        primary = jax.process_index() == 0
        self.checkpointer = None
        if workdir is not None and settings.checkpoint_every:
            self.checkpointer = Checkpointer(workdir, keep=settings.keep_checkpoints,
                                             async_save=settings.async_checkpoint, log=log)
        self.writer = MetricsWriter(workdir, enabled=primary) if workdir is not None else None
        self.last_scalars: dict = {}
        self.seconds = 0.0

    # -- resume --------------------------------------------------------------------------

    def restore(self, state, data_iter=None):
        """The newest good checkpoint's state, restored into `state`'s shardings (any mesh:
        the checkpoint need not come from this one), with `data_iter` moved to where it
        stopped; `state` itself when there is none."""
        if self.checkpointer is None:
            return state
        restored = self.checkpointer.restore_latest(_abstract_like(state))
        if restored is None:
            return state
        state, data_state, _ = restored
        if data_iter is not None:
            own = own_data_state(data_state)
            if own is None:
                self.log(f"the checkpoint's data positions are of {len(data_state['per_process'])} "
                         f"processes, this run has {jax.process_count()}: each process's input "
                         f"pipeline starts a new pass (the parameters continue exactly)")
            else:
                data_iter.set_state(own)
        self.log(f"resumed {self.name}from step {int(state.step)} in {self.workdir}")
        return state

    # -- the loop ------------------------------------------------------------------------

    def run(self, state, *, next_batch, update, data_iter=None, evaluate=None, start_step=None,
            extra=None, on_report=None):
        """Steps from state.step (or start_step) to settings.steps; -> the final state.

        next_batch(step, state) -> batch; update(state, batch, step) -> (state, metrics)
        with metrics a dict of scalars and optional "routing/*" per-layer arrays (device
        or host values); evaluate(step, state) -> {name: value} logged as eval/<name>.
        extra: JSON saved with every checkpoint. on_report(done, scalars): called with
        every step's scalars once they are read (and checked finite).
        """
        s = self.settings
        start = int(state.step) if start_step is None else start_step
        progress = Progress(s.steps, start, s.tokens_per_step, enabled=s.progress_bar)
        watch = PreemptionWatch()
        pending = None  # (done, metrics) of the step before, read once the next is dispatched
        began = time.time()

        def report(done, metrics):
            host = jax.device_get(metrics)
            scalars = {k: float(v) for k, v in host.items() if np.ndim(v) == 0}
            check_finite(done, scalars, self.name)
            shown = scalars.get(self.progress_key)
            progress.update(done, **({self.progress_key: shown} if shown is not None else {}))
            if self.writer is not None and (done % s.log_every == 0 or done == s.steps):
                self.writer.write(done, dict(scalars, tokens_per_second=progress.tokens_per_second(done),
                                             elapsed_seconds=time.time() - began, **_routing_arrays(host)))
            self.last_scalars = scalars
            if on_report is not None:
                on_report(done, scalars)

        try:
            with watch:
                for step in range(start, s.steps):
                    batch = next_batch(step, state)
                    state, metrics = update(state, batch, step)
                    done = step + 1
                    if pending is not None:
                        report(*pending)
                    pending = (done, metrics)
                    preempted = watch.requested()
                    save = self.checkpointer is not None and (
                        done % s.checkpoint_every == 0 or done == s.steps or preempted)
                    evaluate_now = evaluate is not None and s.eval_every and done % s.eval_every == 0 \
                        and done != s.steps
                    if save or evaluate_now or preempted:
                        report(*pending)  # never save or evaluate a state whose loss is not finite
                        pending = None
                    if save:
                        data_state = every_process_data_state(data_iter) if data_iter is not None else {}
                        self.checkpointer.save(done, state, data_state, extra or {})
                    if preempted:
                        if self.checkpointer is not None:
                            self.checkpointer.close()
                        raise Preempted(done, self.workdir)
                    if evaluate_now:
                        results = evaluate(done, state)
                        if self.writer is not None:
                            self.writer.write(done, {f"eval/{k}": v for k, v in results.items()})
                        progress.write(f"step {done}: " + ", ".join(
                            f"{k} {v:.1%}" if isinstance(v, float) and k != "examples" else f"{k} {v}"
                            for k, v in results.items()))
                if pending is not None:
                    report(*pending)
        finally:
            progress.close()
            if self.checkpointer is not None:
                self.checkpointer.close()
        self.seconds = time.time() - began
        return state

    def write(self, step: int, record: dict):
        if self.writer is not None:
            self.writer.write(step, record)

    def close(self):
        if self.writer is not None:
            self.writer.close()


def every_process_data_state(data_iter) -> dict:
    """The data iterators' positions of every process, for the checkpoint (which only
    process 0 writes): each process reads its own shard of the pipeline, and packing
    consumes a different number of examples per batch in each, so positions differ."""
    state = data_iter.get_state()
    if jax.process_count() == 1:
        return state
    from jax.experimental import multihost_utils  # the supported cross-process gather

    encoded = np.frombuffer(json.dumps(state).encode(), np.uint8)
    lengths = np.asarray(multihost_utils.process_allgather(np.asarray([len(encoded)], np.int32))).reshape(-1)
    padded = np.zeros(int(lengths.max()), np.uint8)
    padded[:len(encoded)] = encoded
    rows = np.asarray(multihost_utils.process_allgather(padded)).reshape(len(lengths), -1)
    return {"per_process": [json.loads(bytes(row[:n]).decode()) for row, n in zip(rows, lengths)]}


def own_data_state(saved: dict) -> dict | None:
    """This process's position in a checkpoint's data state; None when the checkpoint was
    written by another number of processes (each shard of the stream is then another)."""
    if "per_process" not in saved:
        return saved if jax.process_count() == 1 else None
    per_process = saved["per_process"]
    if len(per_process) != jax.process_count():
        return None
    return per_process[jax.process_index()]


def _abstract_like(state):
    """ShapeDtypeStructs carrying each leaf's sharding: a restore target on this mesh."""
    def spec(x):
        sharding = x.sharding if isinstance(x, jax.Array) else None
        return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding)

    return jax.tree.map(spec, state)
