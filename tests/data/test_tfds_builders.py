"""Tests for moe_jax.data.tfds_builders: build and read array_record without TF."""

import sys

import pytest

from moe_jax.data import tfds_builders
from moe_jax.data.tasks import TASKS, generate_split


@pytest.fixture
def no_tensorflow():
    """Checks that building and reading never import TensorFlow.

    TensorFlow is not a dependency, so in the project's environment this is a
    genuine TF-free run. (Blocking the import instead would mislead TFDS: etils
    takes a `sys.modules["tensorflow"]` entry, even None, to mean TF is loaded.)
    """
    if "tensorflow" in sys.modules:
        pytest.skip("tensorflow was already imported by another test")
    yield
    assert "tensorflow" not in sys.modules


CONFIG = dict(num_train=60, num_test=12, seed=3)


@pytest.mark.parametrize("task", sorted(TASKS))
def test_build_and_read_without_tensorflow(task, tmp_path, no_tensorflow):
    sources = {split: tfds_builders.load_task_split(task, split, tmp_path, **CONFIG)
               for split in ("train", "test")}
    for split, size in (("train", 60), ("test", 12)):
        source = sources[split]
        assert len(source) == size
        # Rows are generate_split's problems, in order, and come back as Examples.
        expected = generate_split(TASKS[task], split, size, seed=3)
        rows = [TASKS[task].from_record(source[i]) for i in range(size)]
        assert rows == expected
        assert [TASKS[task].from_record(r) for r in source.__getitems__([5, 1])] == [
            expected[5], expected[1]]
        for record in (source[0], source[size - 1]):
            assert TASKS[task].verify(record, record["solution"].decode())
    builder = tfds_builders.builder_for(task, tmp_path, **CONFIG)
    assert builder.is_prepared()
    assert builder.info.splits["train"].num_examples == 60
    assert (tmp_path / f"moe_jax_{task}" / builder.builder_config.name / "1.0.0").is_dir()


def test_second_load_reuses_files(tmp_path, no_tensorflow):
    first = tfds_builders.load_task_split("arithmetic", "test", tmp_path, **CONFIG)
    data_dir = tmp_path / "moe_jax_arithmetic"
    (config_dir,) = data_dir.iterdir()
    stamp = {p.name: p.stat().st_mtime_ns for p in (config_dir / "1.0.0").iterdir()}
    again = tfds_builders.load_task_split("arithmetic", "test", tmp_path, **CONFIG)
    assert {p.name: p.stat().st_mtime_ns for p in (config_dir / "1.0.0").iterdir()} == stamp
    assert [again[i] for i in range(len(again))] == [first[i] for i in range(len(first))]


def test_config_name_spells_out_every_parameter():
    config = tfds_builders.make_config("arithmetic", num_train=100, num_test=10, seed=2,
                                       max_digits=4)
    assert config.name == (
        "carry_slip0.0-fixed_widthFalse-max_digits4-max_operands3-min_operands2-mul_prob0.0-n100-10"
        "-seed2-test0.1")
    # Different difficulty -> different directory, so stale data is never reused.
    other = tfds_builders.make_config("arithmetic", num_train=100, num_test=10, seed=2,
                                      max_digits=5)
    assert other.name != config.name
    with pytest.raises(TypeError, match="max_numbers"):
        tfds_builders.make_config("arithmetic", max_numbers=3)
    with pytest.raises(ValueError, match="unknown task"):
        tfds_builders.make_config("sudoku")


def test_processes_sharing_a_data_dir_generate_once_and_all_read_it(tmp_path):
    """The runs of a sweep share one data_dir: started together, one generates while the
    others wait, and each then reads the finished dataset (a builder made while another
    process was still writing used to miss it)."""
    import subprocess

    from helpers import outside_env

    script = ("import sys; from moe_jax.data import tfds_builders as t; "
              "s = t.load_task_split('arithmetic', 'train', sys.argv[1], num_train=3000, num_test=50); "
              "print(len(s), s[0]['prompt'].decode())")
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], env=outside_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err[-1500:] for _, err in outputs]
    last_lines = {out.splitlines()[-1] for out, _ in outputs}
    assert len(last_lines) == 1 and last_lines.pop().startswith("3000 ")
    assert sum("Downloading and preparing" in out for out, _ in outputs) == 1  # generated once
    (config_dir,) = (tmp_path / "moe_jax_arithmetic").iterdir()
    assert [p.name for p in config_dir.iterdir()] == ["1.0.0"]  # one copy, no leftover temporary
