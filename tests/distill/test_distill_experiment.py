"""Smoke test of experiments/distill.py on its `runlocal` variant (a few steps)."""

import importlib.util

import pytest

from moe_jax.config import load_config


@pytest.mark.slow  # ~75 s of CPU: three trainings and four greedy evaluations
def test_distill_runlocal_reports_teacher_scratch_and_distilled(tmp_path):
    config = load_config("experiments/distill.py:runlocal")
    spec = importlib.util.spec_from_file_location("distill_experiment", "experiments/distill.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    summary = module.run(config, str(tmp_path), log=lambda *_: None)
    assert summary["student_params"] < summary["teacher_params"]
    for key in ("teacher_exact_match", "scratch_exact_match", "distilled_exact_match"):
        assert 0.0 <= summary[key] <= 1.0
    # The teacher is saved, so a rerun (or another experiment) reads it instead of training.
    assert (tmp_path / "teacher").is_dir()


def _experiment():
    spec = importlib.util.spec_from_file_location("distill_experiment", "experiments/distill.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_teacher_is_read_from_a_training_workdir(tmp_path):
    import jax
    import numpy as np

    from moe_jax.models.transformer import Transformer
    from moe_jax.train.checkpoint import Checkpointer
    from moe_jax.train.optimizer import default_optimizer_config, make_optimizer
    from moe_jax.train.state import create_train_state

    config = load_config("experiments/distill.py:runlocal")
    run_dir = tmp_path / "teacher_run"
    state = create_train_state(Transformer.from_config(config.model), make_optimizer(default_optimizer_config()),
                               jax.random.PRNGKey(3), config.data.seq_len)
    ckpt = Checkpointer(str(run_dir), async_save=False, log=lambda *_: None)
    ckpt.save(7, state, {})
    ckpt.close()
    config.distill.teacher_workdir = str(run_dir)
    _, params, _, seconds = _experiment()._teacher(config, str(tmp_path / "work"), None, None, None,
                                                   log=lambda *_: None)
    assert seconds == 0.0 and not (tmp_path / "work" / "teacher").exists()
    jax.tree.map(np.testing.assert_array_equal, params, state.params)

    config.distill.teacher_workdir = str(tmp_path / "nothing_here")
    with pytest.raises(FileNotFoundError, match="distill.teacher_workdir"):
        _experiment()._teacher(config, str(tmp_path / "work"), None, None, None, log=lambda *_: None)


def test_arith_variant_distils_the_main_job():
    main_job = load_config("experiments/pretrain_arith.py:tiny")
    config = load_config("experiments/distill.py:arith")
    assert config.model == main_job.model and config.data == main_job.data
    assert config.student_model.num_layers < config.model.num_layers
