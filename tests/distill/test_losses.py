"""Distillation loss and temperature schedules against hand-computed values."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from moe_jax.distill.losses import distillation_loss, masked_kl
from moe_jax.distill.schedule import temperature_schedule
from moe_jax.models.config import ConfigError

# Two-token vocabulary. Teacher logits [0, 0] -> p_t = [1/2, 1/2].
# Student logits [ln 3, 0]: at tau 1, p_s = [3/4, 1/4];
#   KL = 1/2 ln((1/2)/(3/4)) + 1/2 ln((1/2)/(1/4)) = 1/2 ln(4/3) = 0.143841.
# At tau 2 the student logits halve: p_s = [s, 1] / (1 + s) with s = sqrt(3);
#   KL = 1/2 ln(1/4 / (p0 p1)) = 1/2 ln((1 + s)^2 / (4 s)) = 1/2 ln(7.4641 / 6.9282) = 1/2 ln(1.07735) = 0.037252.
TEACHER = jnp.array([[[0.0, 0.0]]])
STUDENT = jnp.array([[[math.log(3.0), 0.0]]])
MASK = jnp.ones((1, 1))
KL_TAU1 = 0.5 * math.log(4 / 3)
KL_TAU2 = 0.5 * math.log((1 + math.sqrt(3)) ** 2 / (4 * math.sqrt(3)))


def test_kl_by_hand_at_two_temperatures():
    assert float(masked_kl(STUDENT, TEACHER, MASK, 1.0)) == pytest.approx(KL_TAU1, rel=1e-6)
    assert float(masked_kl(STUDENT, TEACHER, MASK, 2.0)) == pytest.approx(KL_TAU2, rel=1e-6)
    assert KL_TAU2 == pytest.approx(0.037252, abs=1e-6)


def test_kl_is_zero_for_equal_logits_and_ignores_masked_positions():
    logits = jnp.array([[[1.0, -2.0, 0.5], [3.0, 0.0, 0.0]]])
    assert float(masked_kl(logits, logits, jnp.ones((1, 2)), 3.0)) == pytest.approx(0.0, abs=1e-7)
    # Position 1 differs wildly but is masked out (a prompt token).
    other = logits.at[0, 1].set(jnp.array([-9.0, 9.0, 0.0]))
    assert float(masked_kl(other, logits, jnp.array([[1.0, 0.0]]), 1.0)) == pytest.approx(0.0, abs=1e-7)


def test_loss_blends_tau_squared_kl_with_cross_entropy():
    targets = jnp.array([[1]])
    # CE of the student on target 1 at tau 1: -ln(1/4) = ln 4.
    loss, metrics = distillation_loss(STUDENT, TEACHER, targets, MASK, tau=2.0, alpha=0.75)
    expected = 0.75 * 4 * KL_TAU2 + 0.25 * math.log(4.0)
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    assert float(metrics["kl"]) == pytest.approx(KL_TAU2, rel=1e-6)
    assert float(metrics["ce_loss"]) == pytest.approx(math.log(4.0), rel=1e-6)
    pure_kl, _ = distillation_loss(STUDENT, TEACHER, targets, MASK, tau=2.0, alpha=1.0)
    assert float(pure_kl) == pytest.approx(4 * KL_TAU2, rel=1e-6)  # the tau^2 factor


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_schedules_run_from_start_to_end_and_hold(kind):
    tau = temperature_schedule(kind, 5.0, 1.0, 100)
    assert float(tau(0)) == pytest.approx(5.0)
    assert float(tau(50)) == pytest.approx(3.0, abs=1e-5)  # both pass the midpoint at half-way
    assert float(tau(100)) == pytest.approx(1.0)
    assert float(tau(250)) == pytest.approx(1.0)
    values = np.array([float(tau(s)) for s in range(0, 101, 10)])
    assert np.all(np.diff(values) < 0)
    if kind == "cosine":  # flat at the ends: 5 - 4 * (1 - cos(pi/10)) / 2 = 4.9021 at step 10
        assert values[1] == pytest.approx(5 - 2 * (1 - math.cos(math.pi / 10)), abs=1e-5)


def test_schedule_and_alpha_errors_name_the_field():
    with pytest.raises(ConfigError, match="distill.schedule"):
        temperature_schedule("exponential", 5.0, 1.0, 10)
    with pytest.raises(ConfigError, match="distill.tau_end"):
        temperature_schedule("linear", 5.0, 0.0, 10)
    assert float(temperature_schedule("constant", 2.0, 1.0, 10)(7)) == 2.0
