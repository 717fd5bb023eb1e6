"""A saved GRM phase is reused only by a config that would have built it."""

import os

import pytest

from moe_jax.config import load_config
from moe_jax.grm import phases
from moe_jax.train.run_config import ConfigMismatchError


def saved(tmp_path, config, *names):
    for name in names:
        directory = tmp_path / "models" / name
        os.makedirs(directory)
        phases.record(str(directory), config, name)


def test_a_changed_setting_of_a_saved_phase_is_named_and_nothing_is_touched(tmp_path):
    config = load_config("experiments/grm_spct.py:runlocal")
    saved(tmp_path, config, "cold_start", "rft")
    phases.check_saved_phases(config, str(tmp_path))  # the same config reuses them
    before = sorted(os.listdir(tmp_path / "models"))

    changed = load_config("experiments/grm_spct.py:runlocal", ["grm.cold_start_steps=7"])
    with pytest.raises(ConfigMismatchError, match=r"grm\.cold_start_steps.*7.*2") as error:
        phases.check_saved_phases(changed, str(tmp_path))
    assert "cold_start" in str(error.value)
    assert sorted(os.listdir(tmp_path / "models")) == before

    # RFT builds on the cold start, so its record names the change too.
    saved_rft_only = tmp_path / "rft_only"
    saved(saved_rft_only, config, "rft")
    with pytest.raises(ConfigMismatchError, match="grm.cold_start_steps"):
        phases.check_saved_phases(changed, str(saved_rft_only))


def test_settings_of_later_phases_and_of_evaluation_leave_a_phase_reusable(tmp_path):
    config = load_config("experiments/grm_spct.py:runlocal")
    saved(tmp_path, config, "cold_start")
    later = load_config("experiments/grm_spct.py:runlocal",
                        ["grm.rl_steps=5", "grm.meta_steps=9", "grm.test_sets=12", "train.steps=3",
                         "grm.rft_samples=3"])
    phases.check_saved_phases(later, str(tmp_path))  # none of these built the cold start
    saved(tmp_path, config, "rft")
    with pytest.raises(ConfigMismatchError, match="grm.rft_samples"):
        phases.check_saved_phases(later, str(tmp_path))
