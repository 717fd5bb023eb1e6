"""A 3-step run of the tiny model gives the one-device losses on every mesh layout, and
on two processes joined by jax.distributed."""

import functools
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from moe_jax.parallel import selftest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@functools.cache
def initial_state():
    return selftest.initial_host_state()


@functools.cache
def losses(layout):
    result = selftest.train_losses(selftest.LAYOUTS[layout], initial_state=initial_state())
    assert result["dropped"] == [0.0, 0.0, 0.0]  # capacity factor E / K: room for all
    return result["losses"]


@pytest.mark.parametrize("layout", ["ep", "ep_data", "ep_fsdp"])
def test_three_steps_on_8_devices_match_one_device(layout):
    one_device = losses("none")
    assert one_device[-1] < one_device[0]  # it trains (the first step's rate is 0: warmup)
    np.testing.assert_allclose(losses(layout), one_device, rtol=0, atol=1e-5)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_of_4_devices_match_one_process_of_8():
    # Layout "ep": the expert axis spans both processes, so the token exchange crosses
    # them. Each process initialises its own shards (create_sharded_train_state).
    port = free_port()
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu",
               PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    procs = [subprocess.Popen(
        [sys.executable, "-u", "-m", "moe_jax.parallel.selftest", "--layout", "ep",
         "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i),
         "--init-timeout", "60", "--heartbeat-timeout", "15"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outputs = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=240)
            assert proc.returncode == 0, err[-3000:]
            outputs.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for i, result in enumerate(outputs):
        assert (result["process_id"], result["process_count"]) == (i, 2)
        assert (result["device_count"], result["local_device_count"]) == (8, 4)
        assert result["dropped"] == [0.0, 0.0, 0.0]
        np.testing.assert_allclose(result["losses"], losses("ep"), rtol=0, atol=1e-5)
