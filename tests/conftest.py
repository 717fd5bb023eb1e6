"""Test setup: 8 simulated CPU devices for sharding tests, float32 matmuls at full precision."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

import sys  # noqa: E402

# Tests import `helpers` (tests/helpers.py) and read configs/ relative to the repo root.
sys.path.insert(0, os.path.dirname(__file__))
os.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop jit caches after each test module: the suite compiles hundreds of distinct
    programs, and keeping them all would grow one process to many GB on a 24 GB runner."""
    yield
    jax.clear_caches()
