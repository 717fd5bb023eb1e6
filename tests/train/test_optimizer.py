import math

import ml_collections
import pytest

from moe_jax.models.config import ConfigError
from moe_jax.train.optimizer import default_optimizer_config, learning_rate_schedule, validate_optimizer_config


def config(**fields):
    c = default_optimizer_config()
    c.update(learning_rate=1e-3, warmup_steps=10, total_steps=100, end_lr_ratio=0.1)
    with c.unlocked():
        for key, value in fields.items():
            c[key] = value
    return c


def test_wsd_warms_up_holds_the_peak_then_anneals_to_the_end_rate():
    lr = learning_rate_schedule(config(schedule="wsd", decay_fraction=0.2))
    # warmup: linear from 0 over 10 steps; stable: steps 10..80; decay: 20 cosine steps.
    assert lr(0) == 0.0 and math.isclose(lr(5), 0.5e-3, rel_tol=1e-6)
    for step in (10, 40, 80):
        assert math.isclose(lr(step), 1e-3, rel_tol=1e-6), step
    # halfway down the cosine: end + (peak - end) * (1 + cos(pi / 2)) / 2 = 0.55e-3
    assert math.isclose(lr(90), 0.55e-3, rel_tol=1e-5)
    assert math.isclose(lr(100), 0.1e-3, rel_tol=1e-5) and math.isclose(lr(150), 0.1e-3, rel_tol=1e-5)


def test_cosine_stays_the_default_when_no_schedule_is_named():
    named, plain = learning_rate_schedule(config(schedule="cosine")), learning_rate_schedule(config())
    for step in (0, 5, 10, 55, 100):
        assert float(named(step)) == float(plain(step))
    # halfway through the 90 decay steps: 0.1e-3 + 0.9e-3 * (1 + cos(pi / 2)) / 2 = 0.55e-3
    assert math.isclose(plain(55), 0.55e-3, rel_tol=1e-5)


@pytest.mark.parametrize("fields, field", [({"schedule": "linear"}, "optimizer.schedule"),
                                           ({"schedule": "wsd", "decay_fraction": 0.0}, "optimizer.decay_fraction"),
                                           ({"learning_rate": 0.0}, "optimizer.learning_rate")])
def test_bad_schedule_fields_name_themselves(fields, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        validate_optimizer_config(config(**fields))


def test_a_config_without_the_optional_fields_validates():
    validate_optimizer_config(ml_collections.ConfigDict(dict(default_optimizer_config())))
