"""A 3-step run of the tiny model gives the one-device losses on every mesh layout, and
on two processes joined by jax.distributed.

Both run `python -m moe_jax.train.selftest` in subprocesses: the two-process run
needs its own processes anyway, and there XLA's CPU backend can compile at LLVM
optimisation level 0 (--xla_backend_optimization_level=0), which roughly halves the
compile time of the tiny model's train step on a 2-core machine; the losses agree with
the default level to ~1e-6.
"""

import functools
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from moe_jax.train.selftest import LAYOUTS

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FAST_COMPILE = "--xla_backend_optimization_level=0"
TIMEOUT_S = 300


def selftest_command(*args):
    return [sys.executable, "-u", "-m", "moe_jax.train.selftest", *args]


def selftest_env(devices):
    return dict(os.environ, JAX_PLATFORMS="cpu",
                XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE}",
                PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))


def json_lines(stdout):
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


@functools.cache
def one_process_results():
    """{layout: result} for one process with 8 devices, every layout from one initial state."""
    proc = subprocess.run(selftest_command("--layout", "none,ep,ep_data,ep_fsdp", "--init", "host"),
                          cwd=REPO, env=selftest_env(8), capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = {r["layout"]: r for r in json_lines(proc.stdout)}
    for result in results.values():
        assert result["dropped"] == [0.0, 0.0, 0.0]  # capacity factor E / K: room for all
    return results


@pytest.mark.parametrize("layout", ["ep", "ep_data", "ep_fsdp"])
def test_three_steps_on_8_devices_match_one_device(layout):
    results = one_process_results()
    one_device = results["none"]["losses"]
    assert one_device[-1] < one_device[0]  # it trains (the first step's rate is 0: warmup)
    assert results[layout]["mesh"] == LAYOUTS[layout]
    np.testing.assert_allclose(results[layout]["losses"], one_device, rtol=0, atol=1e-5)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_of_4_devices_match_one_process_of_8():
    # Layout "ep": the expert axis spans both processes, so the token exchange crosses
    # them. Each process creates its own shards of the state (create_sharded_state),
    # which must equal the one-device initialisation the one-process run copied around.
    port = free_port()
    procs = [subprocess.Popen(
        selftest_command("--layout", "ep", "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
                         "--process-id", str(i), "--init-timeout", "60", "--heartbeat-timeout", "30"),
        cwd=REPO, env=selftest_env(4), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)]
    outputs = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=TIMEOUT_S)
            assert proc.returncode == 0, err[-3000:]
            outputs.append(json_lines(out)[-1])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    expected = one_process_results()["ep"]["losses"]
    for i, result in enumerate(outputs):
        assert (result["process_id"], result["process_count"]) == (i, 2)
        assert (result["device_count"], result["local_device_count"]) == (8, 4)
        assert result["dropped"] == [0.0, 0.0, 0.0]
        np.testing.assert_allclose(result["losses"], expected, rtol=0, atol=1e-5)
