"""A micro model saved as `moe-jax convert` saves one, shared by the serve tests."""

import pytest

from helpers import tiny_char_model
from moe_jax.interop.checkpoint import save_converted


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """-> the directory of a random char-vocabulary micro model (no --config needed)."""
    m, params, router_bias = tiny_char_model(seed=2)  # greedy: one prompt ends early, one runs on
    return save_converted(str(tmp_path_factory.mktemp("served") / "micro"), params, router_bias, m)
