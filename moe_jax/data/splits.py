"""A run's training and held-out splits, generated once into its data directory.

    train, test = load_data(config, workdir)

`config.data` names the task and its settings (num_train, num_test, seed, difficulty);
the splits live in `data.data_dir`, or `<workdir>/data` when that is empty, and are
generated there the first time (moe_jax.data.tfds_builders). On many processes the
first one generates them and the others read what it wrote (`primary_first`).
"""

from __future__ import annotations

import os

import jax

from moe_jax.data.tfds_builders import load_task_split

REQUIRED_FIELDS = ("prompt", "solution", "answer")


def primary_first(fn):
    """fn() on process 0, then, once every process has waited for it, on the others: a
    dataset generated into a shared directory is written once, not raced by every host
    (on hosts with their own disks each still generates its copy)."""
    if jax.process_count() == 1:
        return fn()
    from jax.experimental import multihost_utils  # the supported cross-process barrier

    result = fn() if jax.process_index() == 0 else None
    multihost_utils.sync_global_devices("moe_jax: process 0 prepared the data")
    return result if jax.process_index() == 0 else fn()


def _check_dataset_fields(source, task: str):
    record = source[0]
    missing = [name for name in REQUIRED_FIELDS if name not in record]
    if missing:
        raise KeyError(f"dataset for task {task!r} lacks field(s) {missing}; records have "
                       f"{sorted(record)}")


def load_data(config, workdir: str, difficulty=None):
    """-> (train, test) record sources of config.data's task. difficulty: the task's
    settings to generate with instead of data.difficulty (a shifted task, say)."""
    d = config.data
    data_dir = d.data_dir or os.path.join(workdir, "data")
    split_args = dict(num_train=d.num_train, num_test=d.num_test, seed=d.seed,
                      **(d.difficulty if difficulty is None else difficulty))
    train_source, test_source = primary_first(lambda: (
        load_task_split(d.task, "train", data_dir, **split_args),
        load_task_split(d.task, "test", data_dir, **split_args)))
    _check_dataset_fields(train_source, d.task)
    return train_source, test_source
