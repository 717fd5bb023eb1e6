"""The main job end to end on a micro model: exact resume after SIGKILL, corrupt
checkpoints, NaN stops, and bad input failing before any compilation."""

import os
import random
import signal
import subprocess
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from helpers import MAIN_JOB_MICRO as MICRO, main_command, outside_env
from moe_jax.config import load_config
from moe_jax.data import splits
from moe_jax.models.config import ConfigError
from moe_jax.train import loop
from moe_jax.train.metrics import read_metrics

def run_main(workdir, data_dir, extra=(), **kwargs):
    return subprocess.run(main_command(workdir, data_dir, extra), cwd=os.path.dirname(workdir),
                          env=outside_env(), **kwargs)


def final_params(workdir, step=12):
    path = os.path.join(workdir, "checkpoints", str(step), "state")
    restored = ocp.StandardCheckpointer().restore(path)
    return jax.tree.map(np.asarray, restored["params"])


def losses(workdir):
    return {step: r["loss"] for step, r in read_metrics(workdir).items() if "loss" in r}


@pytest.mark.slow
def test_sigkill_resume_is_exact_and_corrupt_checkpoints_fall_back(tmp_path):
    data_dir = str(tmp_path / "data")
    reference, killed = str(tmp_path / "reference"), str(tmp_path / "killed")
    run_main(reference, data_dir, check=True, capture_output=True)

    # Kill the second run at a random step once a checkpoint has been finalised.
    kill_at = random.Random().randint(4, 10)
    proc = subprocess.Popen(main_command(killed, data_dir), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            cwd=tmp_path, env=outside_env())
    deadline = time.time() + 300

    def finalised():
        path = os.path.join(killed, "checkpoints")
        return os.path.isdir(path) and any(name.isdigit() for name in os.listdir(path))

    while (max(losses(killed), default=0) < kill_at or not finalised()) and proc.poll() is None \
            and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert max(losses(killed)) < 12, "the run finished before it could be killed"

    out = run_main(killed, data_dir, check=True, capture_output=True, text=True)
    assert "resumed from step" in out.stdout + out.stderr
    assert losses(killed) == losses(reference)  # every step, bit for bit
    for a, b in zip(jax.tree.leaves(final_params(killed)), jax.tree.leaves(final_params(reference))):
        np.testing.assert_array_equal(a, b)

    # Damage the newest checkpoint: the rerun must say so, keep step 9 as it was, resume
    # from it and reach the same final parameters.
    ckpt = os.path.join(killed, "checkpoints")
    victim = max((os.path.join(r, f) for r, _, fs in os.walk(os.path.join(ckpt, "12", "state"))
                  for f in fs), key=os.path.getsize)
    with open(victim, "r+b") as f:
        f.truncate(os.path.getsize(victim) // 2)
    step9 = {f: open(os.path.join(r, f), "rb").read() for r, _, fs in os.walk(os.path.join(ckpt, "9")) for f in fs}
    out = run_main(killed, data_dir, check=True, capture_output=True, text=True)
    text = out.stdout + out.stderr
    assert "checkpoint at step 12 is corrupt" in text and "resumed from step 9" in text, text[-2000:]
    assert "Traceback" not in text  # orbax's failed restore is told in one line; its threads' noise is in the log
    assert os.listdir(os.path.join(killed, "corrupt"))
    after9 = {f: open(os.path.join(r, f), "rb").read() for r, _, fs in os.walk(os.path.join(ckpt, "9")) for f in fs}
    assert after9 == step9
    for a, b in zip(jax.tree.leaves(final_params(killed)), jax.tree.leaves(final_params(reference))):
        np.testing.assert_array_equal(a, b)


def micro_config(*extra):
    return load_config("experiments/pretrain_arith.py:tiny", MICRO + list(extra))


def test_nan_loss_stops_with_the_step_and_the_quantity(tmp_path):
    config = micro_config("optimizer.learning_rate=1e30", "optimizer.warmup_steps=1",
                          "optimizer.grad_clip=1e30", f"data.data_dir={tmp_path / 'data'}")
    with pytest.raises(loop.NonFiniteLossError, match=r"step \d+: non-finite \w+=(nan|inf)"):
        loop.train_and_evaluate(config, str(tmp_path / "run"), log=lambda *_: None)
    # Nothing past the last good checkpoint was written.
    assert not os.path.exists(tmp_path / "run" / "checkpoints" / "12")


def test_missing_dataset_field_fails_before_any_model_work(tmp_path, monkeypatch):
    monkeypatch.setattr(splits, "load_task_split", lambda *a, **k: [{"prompt": "1+1=", "answer": "2"}])

    def no_compute(*args, **kwargs):
        raise AssertionError("model state was built before the dataset was checked")

    monkeypatch.setattr(loop, "create_train_state", no_compute)
    with pytest.raises(KeyError, match="solution"):
        loop.train_and_evaluate(micro_config(), str(tmp_path))


def test_bad_config_fails_at_once_naming_the_field(tmp_path):
    out = run_main(str(tmp_path / "run"), str(tmp_path / "data"), ["model.top_k=99"],
                   capture_output=True, text=True)
    assert out.returncode == 2 and out.stdout == ""
    # One line naming the field and what it may be; no traceback.
    assert out.stderr.strip().count("\n") == 0 and "Traceback" not in out.stderr
    assert "model.top_k" in out.stderr and "expected" in out.stderr
    assert not os.path.exists(tmp_path / "run" / "checkpoints")


def test_training_sections_are_validated():
    with pytest.raises(ConfigError, match="train.steps"):
        loop.validate_training_config(micro_config("train.steps=0"))
    with pytest.raises(ConfigError, match="data.seq_len"):
        loop.validate_training_config(micro_config("data.seq_len=4096"))
    with pytest.raises(ConfigError, match="data.curriculum"):
        loop.validate_training_config(micro_config("data.curriculum=1.5"))
