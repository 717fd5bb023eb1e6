"""Multi-host start-up: `jax.distributed.initialize`, or nothing on a single process.

Call `initialize_distributed()` before anything touches a device (jax.devices(), a
jitted call, a mesh). Settings come from the arguments, else from the environment:

    JAX_COORDINATOR_ADDRESS   host:port of process 0's coordinator service
    JAX_NUM_PROCESSES         total number of processes
    JAX_PROCESS_ID            this process's index, 0 .. num_processes - 1

    MOE_JAX_INIT_TIMEOUT       seconds to wait for every process to join (JAX: 300)
    MOE_JAX_HEARTBEAT_TIMEOUT  seconds of silence after which a peer counts as dead and
                               every other process stops with an error (JAX: 100)

With fewer than two processes it does nothing. `auto=True` lets JAX detect a cluster
(SLURM, Open MPI, Kubernetes, Cloud TPU) when nothing is given explicitly.

Pitfalls seen on CPU (gloo collectives): a missing peer aborts the process after
`initialization_timeout` seconds (default 300) and a dead one after
`heartbeat_timeout_seconds` (default 100), so tests pass low values; device ids of
process 1 start at 2048, so never use `device.id` as a global index (a mesh built from
`jax.devices()` does not).
"""

from __future__ import annotations

import os
from typing import NamedTuple


class DistributedSettings(NamedTuple):
    coordinator_address: str | None
    num_processes: int
    process_id: int


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r}: expected an integer") from None


def resolve_settings(coordinator_address: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None) -> DistributedSettings:
    """Arguments first, then JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID."""
    coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
    num_processes = num_processes if num_processes is not None else _env_int("JAX_NUM_PROCESSES")
    process_id = process_id if process_id is not None else _env_int("JAX_PROCESS_ID")
    num_processes = 1 if num_processes is None else num_processes
    if num_processes < 1:
        raise ValueError(f"num_processes = {num_processes}: expected >= 1")
    if num_processes > 1:
        if not coordinator_address:
            raise ValueError(f"num_processes = {num_processes} needs a coordinator address "
                             "(argument or JAX_COORDINATOR_ADDRESS=host:port)")
        if process_id is None or not 0 <= process_id < num_processes:
            raise ValueError(f"process_id = {process_id}: expected 0 <= process_id < {num_processes} "
                             "(argument or JAX_PROCESS_ID)")
    return DistributedSettings(coordinator_address, num_processes, 0 if process_id is None else process_id)


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, *, auto: bool = False,
                           initialization_timeout: int | None = None,
                           heartbeat_timeout_seconds: int | None = None,
                           local_device_ids=None) -> bool:
    """Join the other processes; returns True if jax.distributed is (now) initialised.

    A no-op returning False on a single process (and when already initialised, True).
    """
    import jax

    if jax.distributed.is_initialized():
        return True
    settings = resolve_settings(coordinator_address, num_processes, process_id)
    timeouts = {}
    if initialization_timeout is None:
        initialization_timeout = _env_int("MOE_JAX_INIT_TIMEOUT")
    if heartbeat_timeout_seconds is None:
        heartbeat_timeout_seconds = _env_int("MOE_JAX_HEARTBEAT_TIMEOUT")
    if initialization_timeout is not None:
        timeouts["initialization_timeout"] = int(initialization_timeout)
    if heartbeat_timeout_seconds is not None:
        timeouts["heartbeat_timeout_seconds"] = int(heartbeat_timeout_seconds)
    if settings.num_processes > 1:
        jax.distributed.initialize(coordinator_address=settings.coordinator_address,
                                   num_processes=settings.num_processes,
                                   process_id=settings.process_id,
                                   local_device_ids=local_device_ids, **timeouts)
        return True
    if auto:
        jax.distributed.initialize(local_device_ids=local_device_ids, **timeouts)
        return True
    return False


def shutdown_distributed() -> None:
    """Leave the cluster (a barrier: every process must call it). No-op if not joined."""
    import jax

    if jax.distributed.is_initialized():
        jax.distributed.shutdown()
