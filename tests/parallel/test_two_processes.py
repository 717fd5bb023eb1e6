"""The main job on two processes of 4 CPU devices each (jax.distributed on 127.0.0.1),
expert=4 x data=2: the expert axis spans both processes, so tokens cross them. A peer
killed mid-run stops the other with an error within the heartbeat timeout; rerunning
both resumes, and the losses equal an uninterrupted two-process run's."""

import signal
import socket
import subprocess
import sys
import time

import pytest

from helpers import MICRO_MODEL, MICRO_RUN, REPO, outside_env
from moe_jax.train.metrics import read_metrics

MICRO = MICRO_MODEL + MICRO_RUN + [
    "train.batch_size=8", "eval.max_new_tokens=4", "train.log_every=1",
    "train.checkpoint_every=4", "train.steps=16", "train.async_checkpoint=False", "mesh.data=2",
    "mesh.fsdp=1", "mesh.expert=4", "mesh.tensor=1",
]
HEARTBEAT_S = 10


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(workdir, data_dir, cwd):
    """Both processes of one run, as a cluster would start them: the same command, the
    JAX_* variables telling each its place."""
    port = free_port()
    cmd = [sys.executable, "-u", "-m", "moe_jax.main", f"--config={REPO}/experiments/pretrain_arith.py:tiny",
           f"--workdir={workdir}", *[f"--config.{o}" for o in MICRO + [f"data.data_dir={data_dir}"]]]
    procs = []
    for i in range(2):
        env = outside_env(XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu",
                          JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                          JAX_PROCESS_ID=str(i), MOE_JAX_INIT_TIMEOUT="120",
                          MOE_JAX_HEARTBEAT_TIMEOUT=str(HEARTBEAT_S))
        procs.append(subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    return procs


def finish(procs, timeout=600):
    outs = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=timeout)
            outs.append((proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return outs


def losses(workdir):
    return {s: r["loss"] for s, r in read_metrics(str(workdir)).items() if "loss" in r}


@pytest.mark.slow
def test_a_killed_peer_stops_the_other_and_a_rerun_resumes_exactly(tmp_path):
    data = tmp_path / "data"
    reference = tmp_path / "reference"
    for code, out, err in finish(launch(reference, data, tmp_path)):
        assert code == 0, err[-3000:]
    expected = losses(reference)
    assert sorted(expected) == list(range(1, 17))

    killed = tmp_path / "killed"
    procs = launch(killed, data, tmp_path)
    deadline = time.time() + 600
    while time.time() < deadline and not (killed / "checkpoints" / "4").exists():
        assert procs[0].poll() is None and procs[1].poll() is None, "a process ended early"
        time.sleep(0.2)
    procs[1].send_signal(signal.SIGKILL)
    start = time.time()
    code, _, err = finish([procs[0]], timeout=HEARTBEAT_S * 6 + 60)[0]
    waited = time.time() - start
    procs[1].wait()
    assert code != 0 and waited < HEARTBEAT_S * 6 + 60, (code, waited)
    # The terminal shows that the survivor stopped; its log (library messages go there)
    # names the lost peer.
    assert "error" in err.lower(), err[-3000:]
    log = (killed / "log.txt").read_text().lower()
    assert any(word in log for word in ("heartbeat", "task 1", "unavailable", "terminat")), log[-3000:]

    for code, out, err in finish(launch(killed, data, tmp_path)):
        assert code == 0, err[-3000:]
    resumed = losses(killed)
    assert sorted(resumed) == sorted(expected)
    for step in expected:
        assert abs(resumed[step] - expected[step]) <= 1e-6 * abs(expected[step]), step
