"""A sweep's plan: sweep() x seeds as workdirs and commands, checked before anything runs."""

import os
import shlex
import subprocess
import sys

import pytest

from helpers import REPO, outside_env
from moe_jax.config import load_experiment
from moe_jax.models.config import ConfigError
from moe_jax.sweeps.plan import grid_points, plan_sweep, point_names, seed_list, split_values, value_text

ARITH = os.path.join(REPO, "experiments", "pretrain_arith.py") + ":tiny"


def test_the_pretrain_grid_times_seeds_names_each_run_by_what_varies(tmp_path):
    runs = plan_sweep(ARITH, str(tmp_path), seeds=3, overrides=["train.steps=600"])
    assert len(runs) == 6 * 3
    # top_k is 2 at every point, so the names leave it out.
    assert runs[0].name == "router=softmax,num_experts=4/seed=0"
    assert runs[-1].name == "router=sigmoid_bias,num_experts=16/seed=2"
    assert len({r.workdir for r in runs}) == 18
    assert runs[4].workdir == os.path.join(str(tmp_path), "router=softmax,num_experts=8", "seed=1")
    # The command is main's, with the sweep-wide overrides, the point's and the seed.
    command = runs[4].command
    assert command[1:3] == ("-m", "moe_jax.main") and f"--workdir={runs[4].workdir}" in command
    flags = [a for a in command if a.startswith("--config.")]
    assert flags == ["--config.train.steps=600", f"--config.data.data_dir={tmp_path / 'data'}",
                     "--config.model.router=softmax", "--config.model.num_experts=8",
                     "--config.model.top_k=2", "--config.train.seed=1"]
    # Each run's overrides give the config that run asks for.
    _, config = load_experiment(ARITH, runs[4].overrides)
    assert (config.model.router, config.model.num_experts, config.train.seed, config.train.steps) == \
        ("softmax", 8, 1, 600)


def test_a_dry_run_prints_one_runnable_command_per_run(tmp_path):
    out = subprocess.run([sys.executable, "-m", "moe_jax.cli", "sweep", ARITH, "--root", str(tmp_path / "r"),
                          "--seeds", "2", "--config.train.steps=10", "--dry-run"],
                         cwd=tmp_path, env=outside_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 12 and not os.path.exists(tmp_path / "r")  # nothing started or written
    argv = shlex.split(lines[3])
    assert argv[:3] == ["python", "-m", "moe_jax.main"] and "--config.train.seed=1" in argv


def test_grid_and_seed_options():
    assert seed_list(3) == [0, 1, 2] and seed_list("3") == [0, 1, 2] and seed_list("1,2") == [1, 2]
    for bad in ("0", "1,1", "-1,2", "x"):
        with pytest.raises(ValueError, match="--seeds"):
            seed_list(bad)
    assert split_values("2e-3,3e-3") == ["2e-3", "3e-3"]
    assert split_values("('a', 'b'),('c',)") == ["('a', 'b')", "('c',)"]
    points = grid_points(["optimizer.learning_rate=1e-3,2e-3", "train.batch_size=8,16"])
    assert len(points) == 4 and points[1] == {"config.optimizer.learning_rate": "1e-3", "config.train.batch_size": "16"}
    assert value_text(("attention",)) == "('attention',)" and value_text("softmax") == "softmax"
    # A field may also be written as sweep() keys and --config flags write it.
    assert grid_points(["config.optimizer.learning_rate=1e-3,2e-3", "config.train.batch_size=8,16"]) == points


def test_overrides_take_the_config_prefix_too(tmp_path):
    plain = plan_sweep(ARITH, str(tmp_path), overrides=["train.steps=50"], grid=["model.num_experts=4,8"])
    prefixed = plan_sweep(ARITH, str(tmp_path), overrides=["config.train.steps=50"],
                          grid=["config.model.num_experts=4,8"])
    assert [r.command for r in plain] == [r.command for r in prefixed]
    assert "--config.train.steps=50" in prefixed[0].command


def test_point_names_stay_short_unique_and_filesystem_safe():
    points = [{"config.lora.targets": ("attention",)}, {"config.lora.targets": ("attention", "dense_mlp")}]
    assert point_names(points) == ["targets=attention", "targets=attention+dense_mlp"]
    # The same last name in two sections: the shortest tail that tells them apart.
    clash = [{"config.model.seed": 1, "config.data.seed": 1}, {"config.model.seed": 2, "config.data.seed": 3}]
    assert point_names(clash) == ["model.seed=1,data.seed=1", "model.seed=2,data.seed=3"]
    assert point_names([{"config.x": "a/b c"}, {"config.x": "d"}]) == ["x=a_b_c", "x=d"]
    assert point_names([{}, {}]) == ["000-base", "001-base"]


def test_bad_sweeps_fail_before_anything_runs(tmp_path):
    with pytest.raises(ConfigError, match="train.seed"):  # the seed is the sweep's to set
        plan_sweep(ARITH, str(tmp_path), overrides=["train.seed=3"])
    with pytest.raises(ConfigError, match="model.router"):  # so is every field of the grid
        plan_sweep(ARITH, str(tmp_path), overrides=["model.router=softmax"])
    with pytest.raises(ConfigError, match="model.num_experts"):  # a grid point the model rejects
        plan_sweep(ARITH, str(tmp_path), grid=["model.num_experts=1"])
    with pytest.raises(ConfigError, match="no_such_field"):
        plan_sweep(ARITH, str(tmp_path), grid=["train.no_such_field=1,2"])
    assert not os.path.exists(tmp_path / "data")
