"""Experiment files: each stands alone on the package, names no module in its config,
and loads from any directory. (Each one's small variant also *runs* from outside the
repository in its own smoke test: tests/train/test_loop.py, tests/rl/test_loop.py,
tests/grm/test_pipeline_smoke.py, tests/lora/test_lora_shift_experiment.py,
tests/distill/test_distill_experiment.py.)"""

import ast
import glob
import importlib.util
import json
import os
import subprocess
import sys

import ml_collections
import pytest

from helpers import REPO, outside_env
from moe_jax.config import load_experiment
from moe_jax.jobs import get_job

FILES = sorted(glob.glob(os.path.join(REPO, "experiments", "*.py")))
# Calls that load another file as code or config.
LOADERS = {"spec_from_file_location", "exec_module", "import_module", "load_config",
           "load_experiment", "run_path", "exec", "__import__"}


def test_there_are_experiments():
    assert len(FILES) >= 6


def import_problems(path: str) -> list[str]:
    """What in an experiment file reaches past the public package API."""
    tree = ast.parse(open(path).read())
    problems = []
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in ("experiments", "configs", "tests"):
                    problems.append(f"line {node.lineno}: imports {alias.name}")
                modules.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            if node.level or (node.module or "").split(".")[0] in ("experiments", "configs", "tests"):
                problems.append(f"line {node.lineno}: imports from {node.module or '.'}")
            for alias in node.names:
                if alias.name.startswith("_"):
                    problems.append(f"line {node.lineno}: imports the private name {alias.name}")
                modules.add(alias.asname or alias.name)
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            if isinstance(node.value, ast.Name) and node.value.id in modules:
                problems.append(f"line {node.lineno}: uses the private name {node.value.id}.{node.attr}")
        elif isinstance(node, ast.Call):
            name = getattr(node.func, "attr", getattr(node.func, "id", ""))
            if name in LOADERS:
                problems.append(f"line {node.lineno}: loads code or a config file ({name})")
        elif isinstance(node, ast.Name) and node.id == "__file__":
            problems.append(f"line {node.lineno}: reads its own path (__file__)")
    return problems


@pytest.mark.parametrize("path", FILES, ids=os.path.basename)
def test_an_experiment_imports_the_package_only(path):
    assert import_problems(path) == []


def test_the_import_check_catches_what_it_forbids(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nfrom moe_jax.jobs import recipes\nfrom moe_jax.jobs.lora import _base\n"
                   "import experiments.distill\n"
                   "HERE = os.path.dirname(__file__)\n"
                   "x = recipes._check('tiny', ('tiny',))\n"
                   "from moe_jax.config import load_config\nc = load_config('experiments/x.py')\n")
    problems = " ".join(import_problems(str(bad)))
    for expected in ("private name _base", "imports experiments.distill", "__file__",
                     "recipes._check", "load_config"):
        assert expected in problems, expected


def string_fields(config, prefix=""):
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, ml_collections.ConfigDict):
            yield from string_fields(value, name + ".")
        elif isinstance(value, str):
            yield name, value


def names_code(value: str) -> bool:
    """A module path ("moe_jax.rl.loop", "experiments.distill") or a code file."""
    if value.endswith(".py") or "experiments" in value.split("/") or value.startswith("experiments."):
        return True
    head = value.split(":")[0]
    if "." in head and all(part.isidentifier() for part in head.split(".")):
        try:
            return importlib.util.find_spec(head.split(".")[0]) is not None
        except (ImportError, ValueError):
            return False
    return False


@pytest.mark.parametrize("path", FILES, ids=os.path.basename)
def test_no_config_field_names_a_module_and_each_names_a_real_job(path):
    module, _ = load_experiment(path)
    assert module.VARIANTS, "an experiment lists its variants (VARIANTS) for sweeps and tests"
    for variant in module.VARIANTS:
        _, config = load_experiment(f"{path}:{variant}")
        assert "experiment" not in config
        get_job(config.get("job", "pretrain"))
        code_fields = [(k, v) for k, v in string_fields(config) if names_code(v)]
        assert code_fields == [], (variant, code_fields)
    assert callable(module.sweep) and module.sweep()


def test_the_field_check_recognises_module_paths():
    assert names_code("moe_jax.rl.loop") and names_code("experiments.distill")
    assert names_code("experiments/sft_reasoning.py:tiny") and names_code("json.decoder")
    for plain in ("char", "sigmoid_bias", "runs/arith", "1e-3", "first_fit", "arithmetic"):
        assert not names_code(plain), plain


def test_every_variant_loads_from_another_directory(tmp_path):
    """Each experiment's variants resolve, with the package installed and nothing of the
    repository on the path, from a directory outside it."""
    script = ("import json, sys\nfrom moe_jax.config import load_experiment\nout = {}\n"
              "for path in sys.argv[1:]:\n"
              "    module, _ = load_experiment(path)\n"
              "    out[path] = {v: load_experiment(f'{path}:{v}')[1].get('job', 'pretrain') "
              "for v in module.VARIANTS}\n"
              "print(json.dumps(out))\n")
    proc = subprocess.run([sys.executable, "-c", script, *FILES], cwd=tmp_path, env=outside_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    jobs = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(jobs) == set(FILES)
    assert jobs[os.path.join(REPO, "experiments", "grpo_reasoning.py")]["tiny"] == "grpo"
