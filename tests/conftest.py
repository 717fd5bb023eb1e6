"""Test setup: 8 simulated CPU devices for sharding tests, float32 matmuls at full precision."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import atexit  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

# One persistent compilation cache per test process, inherited by the commands the tests
# start: a run resumed, continued or rerun (in-process or as a new process) compiles the
# same programs as the run before it, and reading them back costs a fraction of compiling
# them again on a few cores. The directory is fresh each session (nothing carries over
# between sessions or from a user's own cache) and removed at exit; each pytest worker has
# its own. A size limit turns on the cache's file lock, so processes that share one (a
# sweep's parallel runs, two processes of one job) never read an entry half written.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _CACHE = tempfile.mkdtemp(prefix="moe_jax_test_compile_cache_")
    atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
    os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(8 << 30))
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

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


def pytest_collection_modifyitems(config, items):
    """Files with the most `slow` tests first, the rest in their collected order, each
    file's tests in their own order. Workers given whole files (`-n 2 --dist loadfile`)
    take them in this order: a heavy file started last would run alone at the end."""
    files = {}
    for item in items:
        files.setdefault(item.nodeid.split("::")[0], []).append(item)
    slow = {name: sum(item.get_closest_marker("slow") is not None for item in tests)
            for name, tests in files.items()}
    order = sorted(files, key=lambda name: -slow[name])  # sorted() is stable
    items[:] = [item for name in order for item in files[name]]
