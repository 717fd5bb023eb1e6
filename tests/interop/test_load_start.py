"""`load_start` reads the two kinds of directory a run may start from."""

import jax
import numpy as np
import pytest

from helpers import tiny_model_config
from moe_jax.interop.checkpoint import load_start, save_converted
from moe_jax.models.transformer import Transformer
from moe_jax.train.checkpoint import Checkpointer
from moe_jax.train.optimizer import default_optimizer_config, make_optimizer
from moe_jax.train.state import create_train_state


def _state(config, seed):
    return create_train_state(Transformer.from_config(config), make_optimizer(default_optimizer_config()),
                              jax.random.PRNGKey(seed), 8)


def _same(a, b):
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def test_a_training_workdir_gives_its_newest_weights_with_the_callers_config(tmp_path):
    config = tiny_model_config()
    ckpt = Checkpointer(str(tmp_path), keep=3, async_save=False, log=lambda *_: None)
    ckpt.save(1, _state(config, 1), {})
    newest = _state(config, 2)
    ckpt.save(2, newest, {})
    ckpt.close()
    model_config, params, router_bias = load_start(str(tmp_path), config, log=lambda *_: None)
    assert model_config is config
    _same(params, newest.params)
    _same(router_bias, newest.router_bias)


def test_a_converted_directory_brings_its_config_and_keeps_the_callers_dtype(tmp_path):
    saved = tiny_model_config(d_model=48)
    state = _state(saved, 3)
    save_converted(str(tmp_path / "ckpt"), state.params, state.router_bias, saved)
    caller = tiny_model_config(dtype="bfloat16")
    model_config, params, _ = load_start(str(tmp_path / "ckpt"), caller, log=lambda *_: None)
    assert model_config.d_model == 48 and model_config.dtype == "bfloat16"
    _same(params, state.params)


def test_a_directory_with_no_checkpoint_is_an_error_that_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        load_start(str(tmp_path), tiny_model_config(), log=lambda *_: None)
