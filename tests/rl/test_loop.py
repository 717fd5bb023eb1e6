"""The GRPO loop end to end on a micro model: SFT -> GRPO, the logged quantities, and
exact resume after a crash mid-run."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from helpers import MICRO_MODEL, MICRO_RUN, REPO, outside_env
from moe_jax.config import load_config
from moe_jax.models.config import ConfigError
from moe_jax.jobs import grpo as grpo_job
from moe_jax.rl import loop
from moe_jax.train.loader import load_model
from moe_jax.train.metrics import read_metrics

MICRO = MICRO_MODEL + MICRO_RUN + [
    "eval.max_new_tokens=8", "mesh.fsdp=1",
]
GRPO = ["train.steps=4", "train.batch_size=2", "rl.group_size=4", "rl.max_new_tokens=8",
        "train.checkpoint_every=2", "rl.num_minibatches=2"]


def zeros_reward(examples, responses):
    """An informative stand-in for the verifier, which an untrained model never satisfies:
    a response is empty when it holds ids outside the vocabulary, as most do here."""
    return {"reward": np.array([float(r != "") + r.count("0") for r in responses], np.float32)}


class Crash(RuntimeError):
    pass


def run_main(spec, workdir, overrides):
    """python -m moe_jax.main as a user runs it, from a directory outside the repository."""
    cmd = [sys.executable, "-m", "moe_jax.main", f"--config={REPO}/experiments/{spec}",
           f"--workdir={workdir}", *[f"--config.{o}" for o in overrides]]
    out = subprocess.run(cmd, cwd=os.path.dirname(workdir), env=outside_env(), capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


@pytest.fixture(scope="module")
def sft_dir(tmp_path_factory):
    """experiments/sft_reasoning.py:tiny at micro sizes."""
    workdir = str(tmp_path_factory.mktemp("sft") / "run")
    stdout = run_main("sft_reasoning.py:tiny", workdir,
                      MICRO + ["train.steps=4", "train.batch_size=4", "train.checkpoint_every=4"])
    assert "held-out exact match" in stdout.splitlines()[-1]
    return workdir


def grpo_config(sft_dir, data_dir, extra=()):
    return load_config("experiments/grpo_reasoning.py:tiny",
                       MICRO + GRPO + [f"rl.init_from={sft_dir}", f"data.data_dir={data_dir}", *extra])


def final_params(config, workdir):
    loaded = load_model(workdir, config.model, log=lambda *_: None)
    return loaded.step, jax.tree.map(np.asarray, loaded.params)


def test_grpo_runs_logs_and_resumes_exactly_after_a_crash(sft_dir, tmp_path):
    data_dir = str(tmp_path / "data")
    config = grpo_config(sft_dir, data_dir)
    reference = str(tmp_path / "reference")
    summary = loop.train_grpo(config, reference, sft_dir, reward_fn=zeros_reward, log=lambda *_: None)
    assert summary["step"] == 4 and summary["initial_exact_match"] is not None

    records = read_metrics(reference)
    assert "eval/exact_match" in records[0] and "eval/exact_match" in records[4]
    for step in range(1, 5):
        for key in ("reward", "kl", "clip_fraction", "entropy", "response_length",
                    "max_load_ratio", "loss", "grad_norm"):
            assert np.isfinite(records[step][key]), (step, key)
    assert records[1]["kl"] == pytest.approx(0.0, abs=1e-6)  # the policy starts as the reference
    assert records[4]["kl"] > 0  # and has moved away from it
    assert any(records[s]["informative"] > 0 for s in range(1, 5))

    calls = []

    def crashing_reward(examples, responses):
        calls.append(1)
        if len(calls) == 4:  # during step 4, after the step-2 checkpoint
            raise Crash("simulated crash")
        return zeros_reward(examples, responses)

    crashed = str(tmp_path / "crashed")
    with pytest.raises(Crash):
        loop.train_grpo(config, crashed, sft_dir, reward_fn=crashing_reward, log=lambda *_: None)
    messages = []
    summary = loop.train_grpo(config, crashed, sft_dir, reward_fn=zeros_reward, log=messages.append)
    assert any("resumed GRPO from step" in m for m in messages), messages
    assert summary["initial_exact_match"] is not None

    step, resumed_params = final_params(config, crashed)
    ref_step, ref_params = final_params(config, reference)
    assert step == ref_step == 4
    jax.tree.map(np.testing.assert_array_equal, resumed_params, ref_params)
    resumed = read_metrics(crashed)
    for s in (3, 4):
        assert resumed[s]["loss"] == records[s]["loss"] and resumed[s]["reward"] == records[s]["reward"]


@pytest.mark.parametrize("override, field", [
    ("rl.group_size=1", "rl.group_size"),
    ("rl.num_minibatches=3", "rl.num_minibatches"),
    ("rl.temperature=0.0", "rl.temperature"),
    ("rl.max_new_tokens=600", "rl.max_new_tokens"),
    ("rl.aggregation='mean'", None),
])
def test_bad_rl_config_fails_before_any_compute(tmp_path, override, field):
    config = grpo_config(str(tmp_path / "none"), str(tmp_path / "data"), [override])
    with pytest.raises((ConfigError, ValueError)) as error:
        loop.validate_rl_config(config)
    if field:
        assert field in str(error.value)


def test_slip_variant_learns_from_a_flawed_teacher_and_is_judged_on_the_truth():
    grpo = load_config("experiments/grpo_reasoning.py:slip")
    sft = grpo.sft
    assert sft.data.difficulty.carry_slip > 0.5  # greedy imitation forgets the carry
    # GRPO samples and evaluates on the SFT model's own problems (and held-out split).
    assert dict(grpo.data.difficulty) == dict(sft.data.difficulty)
    assert grpo.data.seed == sft.data.seed and grpo.data.num_test == sft.data.num_test
    assert grpo.eval.num_examples == grpo.eval.final_num_examples


@pytest.mark.slow
def test_grpo_runs_with_the_grm_as_its_reward(sft_dir, tmp_path):
    """rl.reward=grm end to end: the loop loads the GRM from rl.grm_from and trains on
    its ratings (an untrained GRM here: the plumbing, not the quality, is under test)."""
    from helpers import save_untrained_grm

    save_untrained_grm(tmp_path / "grm" / "models" / "rl")

    config = grpo_config(sft_dir, str(tmp_path / "data"),
                         ["train.steps=2", "rl.reward=grm", f"rl.grm_from={tmp_path / 'grm'}"])
    summary = grpo_job.run(config, str(tmp_path / "run"), log=lambda *_: None)
    assert summary.steps == 2
    records = read_metrics(str(tmp_path / "run"))
    for step in (1, 2):
        assert 0.0 <= records[step]["reward"] <= 1.0  # scores rescaled from 1..10
        assert 0.0 <= records[step]["correct"] <= 1.0  # the verifier, reported alongside
        assert np.isfinite(records[step]["loss"])


def test_grpo_experiment_runs_from_another_directory(sft_dir, tmp_path):
    """experiments/grpo_reasoning.py:tiny through python -m moe_jax.main: the grpo job
    starts from the SFT run, evaluates, takes a step and prints its headline."""
    workdir = str(tmp_path / "grpo")
    stdout = run_main("grpo_reasoning.py:tiny", workdir,
                      MICRO + GRPO + [f"rl.init_from={sft_dir}", "train.steps=1",
                                      f"data.data_dir={tmp_path / 'data'}"])
    assert "held-out exact match" in stdout.splitlines()[-1]
    assert read_metrics(workdir)[1]["reward"] >= 0.0
