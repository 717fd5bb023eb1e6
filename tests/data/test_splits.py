"""A run's splits: generated once into the workdir (or data.data_dir), read back the same,
another difficulty beside them, and a dataset without the training fields refused."""

import pytest

from moe_jax.data import splits
from moe_jax.data.tasks.base import field
from moe_jax.jobs.recipes import shift


def _config(data_dir=""):
    c = shift("runlocal")  # 2-3 operands, and a 4-operand shifted difficulty
    c.data.num_train, c.data.num_test, c.data.data_dir = 12, 4, data_dir
    return c


def _operands(record) -> int:
    return field(record, "prompt").count("+") + field(record, "prompt").count("-") + 1


def test_splits_are_generated_once_and_another_difficulty_lies_beside_them(tmp_path):
    config = _config()
    train, test = splits.load_data(config, str(tmp_path))
    assert (len(train), len(test)) == (12, 4) and (tmp_path / "data").is_dir()
    again, _ = splits.load_data(config, str(tmp_path))
    assert [field(again[i], "prompt") for i in range(12)] == [field(train[i], "prompt") for i in range(12)]
    assert all(2 <= _operands(train[i]) <= 3 for i in range(12))
    shifted, _ = splits.load_data(config, str(tmp_path), difficulty=config.data.shifted_difficulty)
    assert all(_operands(shifted[i]) == 4 for i in range(12))
    # data.data_dir, when set, is where they live instead.
    splits.load_data(_config(str(tmp_path / "shared")), str(tmp_path / "elsewhere"))
    assert (tmp_path / "shared").is_dir() and not (tmp_path / "elsewhere").exists()


def test_a_dataset_without_the_training_fields_is_refused_naming_them(monkeypatch):
    monkeypatch.setattr(splits, "load_task_split", lambda *a, **k: [{"prompt": "1+1=", "answer": "2"}])
    with pytest.raises(KeyError, match=r"'arithmetic' lacks field\(s\) \['solution'\]"):
        splits.load_data(_config(), "unused")
