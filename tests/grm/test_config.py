"""A bad `grm` section fails before any compute, naming the field."""

import pytest

from moe_jax.config import load_config
from moe_jax.grm.pipeline import validate_grm_config
from moe_jax.models.config import ConfigError


@pytest.mark.parametrize("overrides, field", [
    ({"critique": "short"}, "grm.critique"),
    ({"policy_steps": 0, "policy_train_sets": 5}, "grm.policy_train_sets"),
    ({"policy_steps": 0, "init_from_policy": True}, "grm.init_from_policy"),
    ({"init_from": "ckpt", "init_from_policy": True}, "grm.init_from_policy"),
    ({"policy_train_sets": -1}, "grm.policy_train_sets"),
    ({"test_sets": 0}, "grm.test_sets"),
    ({"eval_ks": (1, 3, 16)}, "grm.eval_ks"),
    ({"best_of_n_pairing": "swiss"}, "grm.best_of_n_pairing"),
    ({"response_view": "digits"}, "grm.response_view"),
    ({"response_view": "answer", "critique": "worked"}, "grm.response_view"),
    ({"no_best_fraction": 1.0}, "grm.no_best_fraction"),
    ({"no_best_all_wrong": 1.5}, "grm.no_best_all_wrong"),
    ({"meta_sets": -1}, "grm.meta_sets"),
    ({"meta_samples": 0}, "grm.meta_samples"),
    ({"hint_fraction": 1.0}, "grm.hint_fraction"),
    ({"rft_hinted": True}, "grm.rft_hinted"),  # with hint_fraction 0: a hint it never saw
])
def test_bad_grm_config_names_the_field(overrides, field):
    config = load_config("experiments/grm_spct.py:tiny")
    config.grm.update(overrides)
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        validate_grm_config(config)


def test_the_experiment_configs_validate():
    for variant in ("tiny", "tiny_main", "hf"):
        validate_grm_config(load_config(f"experiments/grm_spct.py:{variant}"))


def test_trajectories_longer_than_the_sampling_budget_fail_before_training(tmp_path):
    from moe_jax.grm.pipeline import train_and_evaluate_grm

    config = load_config("experiments/grm_spct.py:runlocal")
    config.grm.policy_train_sets = 0  # no policy to train before the check
    config.grm.max_new_tokens = 60  # the verdict teacher writes up to 137 tokens here
    with pytest.raises(ConfigError, match="grm.max_new_tokens"):
        train_and_evaluate_grm(config, str(tmp_path), log=lambda *_: None)
    assert not (tmp_path / "models").exists()  # nothing trained or saved


def test_hinted_inputs_longer_than_the_prompt_budget_fail_before_training(tmp_path):
    from moe_jax.grm.pipeline import train_and_evaluate_grm

    config = load_config("experiments/grm_spct.py:runlocal")
    config.grm.policy_train_sets = 0
    config.grm.prompt_len = 56  # fits every input (at most 52 tokens), not a hinted one (61)
    with pytest.raises(ConfigError, match="grm.prompt_len"):
        train_and_evaluate_grm(config, str(tmp_path), log=lambda *_: None)
    assert not (tmp_path / "models").exists()
