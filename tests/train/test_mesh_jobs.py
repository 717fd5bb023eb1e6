"""The main job on a mesh: the same losses on every layout of 8 devices as on one, a
checkpoint that continues on another mesh, a changed config refused with the workdir
untouched, and SIGTERM saving where it stopped (8 simulated CPU devices, micro model)."""

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from helpers import MICRO_MODEL, MICRO_RUN, REPO, outside_env, rewind
from moe_jax.config import load_config
from moe_jax.train import loop
from moe_jax.train.metrics import read_metrics
from moe_jax.train.run_config import ConfigMismatchError

MICRO = MICRO_MODEL + MICRO_RUN + [
    "train.batch_size=8", "eval.max_new_tokens=4", "train.log_every=1",
    "train.checkpoint_every=3", "train.async_checkpoint=False",
    # A schedule that does not follow train.steps: runs of different lengths then compile
    # the same step, read back from the compilation cache after the first.
    "optimizer.total_steps=40",
]
LAYOUTS = {"one": (1, 1, 1, 1), "ep4_data2": (2, 1, 4, 1), "fsdp2_ep4": (1, 2, 4, 1), "data8": (8, 1, 1, 1),
           "fsdp8": (1, 8, 1, 1)}
quiet = dict(log=lambda *_: None)


def mesh(layout):
    return [f"mesh.{axis}={size}" for axis, size in zip(("data", "fsdp", "expert", "tensor"), LAYOUTS[layout])]


def config(tmp_path, layout, steps=6, *extra):
    return load_config("experiments/pretrain_arith.py:tiny",
                       MICRO + mesh(layout) + [f"train.steps={steps}", f"data.data_dir={tmp_path / 'data'}",
                                               *extra])


def losses(workdir):
    return {s: r["loss"] for s, r in read_metrics(workdir).items() if "loss" in r}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """layout -> (its 6-step run's workdir, summary), each layout trained once per module."""
    tmp, runs = tmp_path_factory.mktemp("mesh"), {}

    def train(layout):
        if layout not in runs:
            runs[layout] = tmp / layout, loop.train_and_evaluate(config(tmp, layout), str(tmp / layout), **quiet)
        return runs[layout]
    return train


@pytest.fixture(scope="module")
def one_device(trained):
    workdir, _ = trained("one")
    return workdir.parent, losses(str(workdir))


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["ep4_data2", "fsdp2_ep4", "data8"])
def test_every_layout_trains_as_one_device_does(one_device, trained, layout):
    tmp, expected = one_device
    _, summary = trained(layout)
    assert summary["mesh"] == dict(zip(("data", "fsdp", "expert", "tensor"), LAYOUTS[layout]))
    got = losses(str(tmp / layout))
    assert sorted(got) == sorted(expected) == list(range(1, 7))
    for step in expected:
        assert abs(got[step] - expected[step]) <= 1e-4 * abs(expected[step]), (step, got[step], expected[step])


@pytest.mark.slow
def test_a_checkpoint_of_8_devices_continues_on_1_and_on_fsdp8(trained, tmp_path):
    """Written on data=2 x expert=4 at step 3, continued to step 6 on one device and on
    fsdp=8: the same losses as the original run's."""
    original, _ = trained("ep4_data2")
    reference = losses(str(original))
    for layout in ("one", "fsdp8"):
        copy = tmp_path / layout
        shutil.copytree(original, copy)
        rewind(str(copy), 3)  # continue from step 3
        logged = []
        loop.train_and_evaluate(config(original.parent, layout), str(copy), log=logged.append)
        assert any("resumed from step 3" in line for line in logged), logged
        assert any("continuing with changed mesh." in line for line in logged), logged  # a safe change, logged
        continued = losses(str(copy))
        assert sorted(continued) == [4, 5, 6]
        for step in continued:
            assert abs(continued[step] - reference[step]) <= 1e-5 * abs(reference[step]), (layout, step)


def digests(workdir):
    out = {}
    for root, _, files in os.walk(workdir):
        for name in files:
            path = os.path.join(root, name)
            out[os.path.relpath(path, workdir)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return out


def main_command(workdir, data_dir, layout, steps, *extra):
    flags = MICRO + mesh(layout) + [f"train.steps={steps}", f"data.data_dir={data_dir}", *extra]
    return [sys.executable, "-u", "-m", "moe_jax.main", f"--config={REPO}/experiments/pretrain_arith.py:tiny",
            f"--workdir={workdir}", *[f"--config.{f}" for f in flags]]


@pytest.mark.slow
def test_a_changed_model_is_refused_and_a_longer_run_resumes(one_device):
    tmp, _ = one_device
    workdir = tmp / "one"
    before = digests(workdir)
    out = subprocess.run(main_command(workdir, tmp / "data", "one", 6, "model.num_experts=16"),
                         cwd=tmp, env=outside_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "model.num_experts" in out.stderr and "16" in out.stderr and "8" in out.stderr
    assert "Traceback" not in out.stderr
    assert digests(workdir) == before  # nothing moved, nothing rewritten, the log included
    with pytest.raises(ConfigMismatchError, match="model.num_experts"):
        loop.train_and_evaluate(config(tmp, "one", 6, "model.num_experts=16"), str(workdir), **quiet)
    summary = loop.train_and_evaluate(config(tmp, "one", 8), str(workdir), **quiet)
    assert summary["step"] == 8 and not (workdir / "corrupt").exists()


@pytest.mark.slow
def test_sigterm_saves_at_the_next_step_and_the_rerun_matches(one_device, tmp_path):
    """A long run stopped early by SIGTERM saves the step it reached; a rerun resumes from
    it and its next steps, like those before the signal, match an uninterrupted run's."""
    tmp, _ = one_device
    stopped, steps = tmp_path / "stopped", 400  # far more than it runs: the signal lands early
    proc = subprocess.Popen(main_command(stopped, tmp / "data", "one", steps, "train.checkpoint_every=1000"),
                            cwd=tmp_path, env=outside_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    target = random.Random().randint(2, 9)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if len(losses(str(stopped))) >= target:
            proc.send_signal(signal.SIGTERM)
            break
        time.sleep(0.05)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err[-2000:]
    assert "preempted" in err and "Traceback" not in err
    saved = sorted(int(s) for s in os.listdir(stopped / "checkpoints") if s.isdigit())
    logged = max(losses(str(stopped)))
    assert saved == [logged] and target <= logged < steps  # the step it was at, not the end

    end = logged + 2  # a short continuation past the saved step
    out = subprocess.run(main_command(stopped, tmp / "data", "one", end, "train.checkpoint_every=1000"),
                         cwd=tmp_path, env=outside_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"resumed from step {logged}" in out.stdout + out.stderr
    reference = tmp_path / "reference"
    loop.train_and_evaluate(config(tmp, "one", end, "train.checkpoint_every=1000"), str(reference), **quiet)
    expected, resumed = losses(str(reference)), losses(str(stopped))
    assert sorted(resumed) == sorted(expected) == list(range(1, end + 1))
    np.testing.assert_allclose([resumed[s] for s in sorted(expected)], [expected[s] for s in sorted(expected)],
                               rtol=1e-6)
    assert json.load(open(stopped / "summary.json"))["steps"] == end
