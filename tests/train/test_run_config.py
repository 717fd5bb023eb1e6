from moe_jax.train import run_config


def test_a_field_added_later_reads_as_what_its_absence_meant():
    recorded = {"optimizer.learning_rate": 3e-3}  # written before optimizer.schedule existed
    same = dict(recorded, **{"optimizer.schedule": "cosine", "optimizer.decay_fraction": 0.2})
    assert run_config.differences(recorded, same) == ([], [])
    changed = dict(same, **{"optimizer.schedule": "wsd"})
    assert run_config.differences(recorded, changed) == ([("optimizer.schedule", "cosine", "wsd")], [])
    # Any other new field is a change the run cannot absorb.
    assert run_config.differences(recorded, dict(recorded, **{"model.extra": 1}))[0] == [
        ("model.extra", "<absent>", 1)]
