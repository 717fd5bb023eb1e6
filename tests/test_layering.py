"""The package's import order (moe_jax.LAYERS), checked on every module's imports.

Every `import moe_jax...` / `from moe_jax... import` is read from the source (those
inside functions too), as is every `importlib.import_module("moe_jax...")` with a
literal name. A module may import its own subpackage and the rows above its own; a
peer in its row or anything below is an error naming the file and line.
"""

import ast
import os
import shutil
import textwrap

import moe_jax

PACKAGE_DIR = os.path.dirname(moe_jax.__file__)


def _unit(module: str) -> str:
    """moe_jax.moe.router -> "moe"; moe_jax.main -> "main"."""
    return module.split(".")[1]


def imported_modules(source: str):
    """(line, module name) of every moe_jax import in `source`, however deep."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module
            if node.module == "moe_jax":  # from moe_jax import jobs
                yield from ((node.lineno, f"moe_jax.{a.name}") for a in node.names)
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", ""))
              == "import_module" and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)):
            yield node.lineno, node.args[0].value


def layering_violations(package_dir: str, layers) -> list[str]:
    rank = {unit: i for i, row in enumerate(layers) for unit in row}
    problems = []
    for root, _, files in os.walk(package_dir):
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            path = os.path.join(root, name)
            rel = os.path.relpath(path, os.path.dirname(package_dir))
            parts = rel[:-3].split(os.sep)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            if len(parts) == 1:
                continue  # moe_jax/__init__.py: the order itself
            me = parts[1]
            if me not in rank:
                problems.append(f"{rel}: {me!r} is in no row of moe_jax.LAYERS")
                continue
            with open(path) as f:
                source = f.read()
            for line, module in imported_modules(source):
                if not module.startswith("moe_jax.") or _unit(module) == me:
                    continue
                target = _unit(module)
                if target not in rank:
                    problems.append(f"{rel}:{line} imports {module}, which is in no row")
                elif rank[target] >= rank[me]:
                    kind = "a peer in its row" if rank[target] == rank[me] else "a row below"
                    problems.append(f"{rel}:{line} imports {module}: {kind} ({me} -> {target})")
    return problems


def test_every_import_follows_the_order():
    assert layering_violations(PACKAGE_DIR, moe_jax.LAYERS) == []


def test_every_subpackage_is_in_a_row():
    units = {n[:-3] if n.endswith(".py") else n for n in os.listdir(PACKAGE_DIR)
             if not n.startswith(("_", ".")) and (n.endswith(".py") or os.path.isdir(os.path.join(PACKAGE_DIR, n)))}
    assert units == {u for row in moe_jax.LAYERS for u in row}


def test_a_reintroduced_upward_import_is_caught(tmp_path):
    copy = tmp_path / "moe_jax"
    shutil.copytree(PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert layering_violations(str(copy), moe_jax.LAYERS) == []
    # The forward pass reaching up to a checkpoint format, lazily inside a function, as
    # layers/ once did for FP8.
    with open(copy / "layers" / "norms.py", "a") as f:
        f.write(textwrap.dedent("""

            def _block():
                from moe_jax.quant.weights import quantize_tree
                return quantize_tree
        """))
    # And a peer import inside one row, by string.
    with open(copy / "rl" / "rewards.py", "a") as f:
        f.write("\n\ndef _grm():\n    import importlib\n    return importlib.import_module('moe_jax.grm.reward')\n")
    problems = layering_violations(str(copy), moe_jax.LAYERS)
    assert any(p.startswith(os.path.join("moe_jax", "layers", "norms.py")) and "moe_jax.quant.weights" in p
               for p in problems), problems
    assert any("rl/rewards.py" in p and "moe_jax.grm.reward" in p for p in problems), problems
    assert len(problems) == 2
