"""Running a sweep's runs on this machine, P at a time, as `python -m moe_jax.main`.

    results = launch(runs, parallel=2)

Each run is its own process with its own workdir, its terminal output in
<workdir>/console.log. A run whose workdir holds a summary of the config this sweep
asks for is finished and skipped; any other is started, and the trainer resumes it
from its newest checkpoint, so rerunning a sweep that was stopped redoes nothing that
was finished and little of what was not. Ctrl-C (or SIGTERM) stops the running runs the
way a scheduler preempts them: SIGTERM, a checkpoint at the next step, exit.

Cores: a run's XLA uses every core it may run on. With P runs on N cores each run is
given N // P of them (Linux CPU affinity, which XLA sizes its thread pool from), so P
runs do not fight over every core. The default P is N // 2: the tiny models here run
best on two cores each.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import time

from moe_jax.jobs.summary import read_summary
from moe_jax.sweeps.plan import Run
from moe_jax.train import run_config

CONSOLE_FILE = "console.log"


def default_parallel() -> int:
    return max(1, _cores() // 2)


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def recorded_values_agree(run: Run) -> bool:
    """Whether the workdir's recorded config (if it records one) has this run's values in
    every field the sweep sets; a run of other values is not this sweep's finished run."""
    recorded = run_config.read(run.workdir)
    if recorded is None:
        return True
    flat = run_config.flatten(recorded)
    from moe_jax.config import load_experiment

    _, wanted = load_experiment(run.spec, run.overrides)
    asked = run_config.flatten(wanted)
    fields = {o.partition("=")[0].strip() for o in run.overrides}
    return all(flat.get(f) == asked.get(f) for f in fields if f in asked)


def is_finished(run: Run) -> bool:
    return read_summary(run.workdir) is not None and recorded_values_agree(run)


@dataclasses.dataclass
class Outcome:
    run: Run
    status: str  # "finished" (this time), "skipped" (already finished), "failed", "stopped"
    seconds: float = 0.0
    message: str = ""


def _last_line(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            lines = [line.strip() for line in f.read().splitlines()[-200:] if line.strip()]
    except OSError:
        return ""
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or [""])[-1][:300]


def _start(run: Run, cores: list[int] | None, env: dict | None) -> subprocess.Popen:
    os.makedirs(run.workdir, exist_ok=True)
    out = open(os.path.join(run.workdir, CONSOLE_FILE), "a")
    out.write(f"$ {run.shell()}\n")
    out.flush()

    def pin():
        if cores:
            os.sched_setaffinity(0, cores)

    try:
        return subprocess.Popen(run.command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, preexec_fn=pin if cores else None, start_new_session=True)
    finally:
        out.close()


def _core_slots(parallel: int) -> list[list[int] | None]:
    """One core set per concurrent run; None (no pinning) when one run has them all."""
    if parallel <= 1 or not hasattr(os, "sched_setaffinity"):
        return [None] * max(parallel, 1)
    cores = sorted(os.sched_getaffinity(0))
    share = max(1, len(cores) // parallel)
    return [cores[(i * share) % len(cores):(i * share) % len(cores) + share] for i in range(parallel)]


def launch(runs: list[Run], parallel: int | None = None, log=print, env: dict | None = None,
           poll_seconds: float = 1.0) -> list[Outcome]:
    """Run every unfinished run, `parallel` at a time; -> one Outcome per run, in order."""
    parallel = parallel or default_parallel()
    outcomes: dict[int, Outcome] = {}
    pending = []
    for i, run in enumerate(runs):
        if is_finished(run):
            outcomes[i] = Outcome(run, "skipped", message=read_summary(run.workdir).headline())
        else:
            pending.append(i)
    skipped = len(outcomes)
    log(f"sweep: {len(runs)} runs, {skipped} already finished, {len(pending)} to run, "
        f"{parallel} at a time")
    slots = _core_slots(parallel)
    free = list(range(parallel))
    active: dict[int, tuple[subprocess.Popen, int, float]] = {}  # run index -> (process, slot, start)
    stop = {"requested": False}
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.update(requested=True))
    try:
        while (pending or active) and not stop["requested"]:
            while pending and free:
                i, slot = pending.pop(0), free.pop(0)
                active[i] = (_start(runs[i], slots[slot], env), slot, time.time())
                log(f"  start  {runs[i].name}")
            for i, (proc, slot, began) in list(active.items()):
                code = proc.poll()
                if code is None:
                    continue
                del active[i]
                free.append(slot)
                outcomes[i] = _outcome(runs[i], code, time.time() - began)
                done = sum(o.status in ("finished", "skipped") for o in outcomes.values())
                log(f"  {outcomes[i].status:6s} {runs[i].name} ({outcomes[i].seconds:.0f}s): "
                    f"{outcomes[i].message}   [{done}/{len(runs)} done]")
            time.sleep(poll_seconds)
    except KeyboardInterrupt:
        stop["requested"] = True
    finally:
        if active:
            _stop_all(runs, active, outcomes, log)
        signal.signal(signal.SIGTERM, previous)
    for i in pending:
        outcomes.setdefault(i, Outcome(runs[i], "stopped", message="not started"))
    return [outcomes[i] for i in range(len(runs))]


def _outcome(run: Run, code: int, seconds: float) -> Outcome:
    summary = read_summary(run.workdir)
    if code == 0 and summary is not None:
        return Outcome(run, "finished", seconds, summary.headline())
    reason = _last_line(os.path.join(run.workdir, CONSOLE_FILE))
    return Outcome(run, "failed", seconds, f"exit {code}: {reason} (see {run.workdir}/{CONSOLE_FILE})")


def _stop_all(runs, active, outcomes, log, grace_seconds: float = 120.0):
    """SIGTERM every running run (each checkpoints at its next step and exits), then wait."""
    log(f"sweep: stopping {len(active)} running run(s); rerun the same command to resume")
    for proc, _, _ in active.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.time() + grace_seconds
    for i, (proc, _, began) in active.items():
        try:
            proc.wait(timeout=max(deadline - time.time(), 1))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        outcomes[i] = Outcome(runs[i], "stopped", time.time() - began, "stopped; resumes on a rerun")


def write_index(root: str, runs: list[Run], outcomes: list[Outcome]) -> str:
    """<root>/sweep.json: every run's name, workdir, overrides and last status, for the
    report; runs an earlier sweep into the same root listed and this one did not (other
    seeds, another grid) stay listed after this sweep's."""
    path = os.path.join(root, "sweep.json")
    os.makedirs(root, exist_ok=True)
    records = [{"point": r.point, "seed": r.seed, "workdir": os.path.relpath(r.workdir, root),
                "overrides": list(r.overrides), "status": o.status} for r, o in zip(runs, outcomes)]
    if os.path.exists(path):
        with open(path) as f:
            earlier = json.load(f)["runs"]
        listed = {r["workdir"] for r in records}
        records += [r for r in earlier if r["workdir"] not in listed]
    with open(path + ".tmp", "w") as f:
        json.dump({"runs": records}, f, indent=1)
    os.replace(path + ".tmp", path)
    return path
