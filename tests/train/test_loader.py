"""`load_model` reads every kind of directory a finished run's model lives in."""

import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from helpers import tiny_model_config
from moe_jax.interop.checkpoint import save_converted
from moe_jax.models.config import ConfigError
from moe_jax.models.transformer import Transformer
from moe_jax.quant.checkpoint import save_quantized
from moe_jax.train.checkpoint import Checkpointer, CorruptCheckpointError
from moe_jax.train.loader import RUN_CONFIG_FILE, load_model
from moe_jax.train.optimizer import default_optimizer_config, make_optimizer
from moe_jax.train.state import create_train_state

quiet = dict(log=lambda *_: None)


def _state(config, seed):
    return create_train_state(Transformer.from_config(config), make_optimizer(default_optimizer_config()),
                              jax.random.PRNGKey(seed), 8)


def _same(a, b):
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def _workdir(tmp_path, config):
    ckpt = Checkpointer(str(tmp_path), keep=3, async_save=False, **quiet)
    first, newest = _state(config, 1), _state(config, 2)
    ckpt.save(1, first, {})
    ckpt.save(2, newest, {})
    ckpt.close()
    return first, newest


def test_a_training_workdir_gives_its_newest_weights_with_the_callers_config(tmp_path):
    config = tiny_model_config()
    _, newest = _workdir(tmp_path, config)
    loaded = load_model(str(tmp_path), config, **quiet)
    assert loaded.model_config is config and loaded.source == "workdir" and loaded.step == 2
    _same(loaded.params, newest.params)
    _same(loaded.router_bias, newest.router_bias)


def test_a_step_inside_a_workdir_and_its_state_dir_read_that_step(tmp_path):
    config = tiny_model_config()
    first, _ = _workdir(tmp_path, config)
    for path in (tmp_path / "checkpoints" / "1", tmp_path / "checkpoints" / "1" / "state"):
        loaded = load_model(str(path), config, **quiet)
        assert loaded.step == 1
        _same(loaded.params, first.params)
    assert load_model(str(tmp_path / "checkpoints"), config, **quiet).step == 2


def test_a_workdir_brings_its_recorded_config_and_a_damaged_step_is_reported_not_moved(tmp_path):
    config = tiny_model_config(d_model=48)
    _workdir(tmp_path, config)
    with open(tmp_path / RUN_CONFIG_FILE, "w") as f:
        json.dump({"model": config.to_dict(), "data": {"tokenizer": "char"}}, f)
    assert load_model(str(tmp_path), **quiet).model_config.d_model == 48
    # Damage the newest step: the loader falls back to step 1 and touches nothing.
    step_dir = tmp_path / "checkpoints" / "2"
    victim = max((os.path.join(r, f) for r, _, fs in os.walk(step_dir) for f in fs), key=os.path.getsize)
    with open(victim, "r+b") as f:
        f.write(b"\0" * 64)
    assert load_model(str(tmp_path), **quiet).step == 1
    assert step_dir.exists() and not (tmp_path / "corrupt").exists()
    with pytest.raises(CorruptCheckpointError, match="step 2"):
        load_model(str(step_dir), **quiet)


def test_a_workdir_read_with_another_models_config_names_the_fields_that_shape_it(tmp_path):
    config = tiny_model_config(d_model=48)
    _workdir(tmp_path, config)
    with open(tmp_path / RUN_CONFIG_FILE, "w") as f:
        json.dump({"model": config.to_dict(), "data": {"tokenizer": "char"}}, f)
    asked = tiny_model_config(d_model=64)
    asked.bias_update_rate = config.bias_update_rate + 0.5  # differs, but shapes nothing
    with pytest.raises(ConfigError) as caught:
        load_model(str(tmp_path), asked, **quiet)
    message = str(caught.value)
    assert caught.value.field == "model.d_model" and "= 64" in message and "48" in message
    assert "bias_update_rate" not in message
    # A caller's config that differs only in what shapes nothing reads the run.
    assert load_model(str(tmp_path), tiny_model_config(d_model=48, bias_update_rate=0.5), **quiet).step == 2


def test_a_model_directory_brings_its_config_and_keeps_the_callers_dtype(tmp_path):
    saved = tiny_model_config(d_model=48)
    state = _state(saved, 3)
    save_converted(str(tmp_path / "ckpt"), state.params, state.router_bias, saved)
    caller = tiny_model_config(dtype="bfloat16")
    loaded = load_model(str(tmp_path / "ckpt"), caller)
    assert loaded.model_config.d_model == 48 and loaded.model_config.dtype == "bfloat16"
    assert loaded.source == "model_dir"
    _same(loaded.params, state.params)


def test_a_quantized_export_is_dequantized_on_load(tmp_path):
    config = tiny_model_config()
    state = _state(config, 4)
    save_quantized(str(tmp_path / "q"), state.params, state.router_bias, config, bits=8)
    loaded = load_model(str(tmp_path / "q"))
    assert loaded.source == "quantized" and loaded.quantization["bits"] == 8
    # int8 with per-group scales: every weight within half a step of its group's scale.
    err = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
              for a, b in zip(jax.tree.leaves(loaded.params), jax.tree.leaves(state.params)))
    assert 0 < err < 0.02


def test_no_model_is_an_error_that_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        load_model(str(tmp_path), tiny_model_config(), **quiet)
    os.makedirs(tmp_path / "checkpoints")
    with pytest.raises(FileNotFoundError, match="config"):  # a workdir without a recorded config
        load_model(str(tmp_path), **quiet)


def test_a_bare_state_tree_reads_whatever_its_optimizer_state(tmp_path):
    # No Checkpointer, no seal, an optimizer state of another structure: still readable.
    state = _state(tiny_model_config(), 5)
    tree = {"step": np.int32(7), "params": state.params, "opt_state": {"other": np.zeros(3)},
            "router_bias": state.router_bias}
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(str(tmp_path / "checkpoints" / "7" / "state"), tree)
    loaded = load_model(str(tmp_path), tiny_model_config(), **quiet)
    assert loaded.step == 7
    _same(loaded.params, state.params)
