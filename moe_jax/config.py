"""Configs from specs and `--config.x=y` overrides, the same way for every command.

A spec is `path.py[:arg]` (a config or experiment file defining `get_config(arg=None)`,
big_vision style) or the name of a model preset (`tiny`, `deepseek_v2_lite`,
`deepseek_v3`; moe_jax.models.presets), which resolves from any directory. An
experiment file is executed once: `load_experiment` returns the module with the config,
so a job can run the very file's own entry points (see moe_jax.jobs).

Overrides are `key.path=value`, parsed to the type of the field they replace; on the
command line every `moe-jax` subcommand and `python -m moe_jax.main` take them as
`--config.model.num_experts=16` (or `--config.model.num_experts 16`).
"""

from __future__ import annotations

import ast
import importlib.util
import os
import types

import ml_collections

from moe_jax.models.config import ConfigError, validate_model_config
from moe_jax.models.presets import PRESETS

OVERRIDE_PREFIX = "--config."


def load_experiment(spec: str, overrides=()) -> tuple[types.ModuleType | None, ml_collections.ConfigDict]:
    """-> (the module the spec names, or None for a preset; its validated config)."""
    path, _, arg = spec.partition(":")
    if os.path.isfile(path):
        module = _exec_file(path)
        if not hasattr(module, "get_config"):
            raise AttributeError(f"config file {path!r} defines no get_config(arg)")
        config = module.get_config(arg or None)
    elif path in PRESETS and os.sep not in path and not path.endswith(".py"):
        module, config = None, PRESETS[path]()
    else:
        raise FileNotFoundError(f"config {spec!r}: {path!r} is neither a file nor a preset name "
                                f"(presets: {', '.join(sorted(PRESETS))})")
    for override in overrides:
        apply_override(config, override)
    validate(config)
    return module, config


def load_config(spec: str, overrides=()) -> ml_collections.ConfigDict:
    """`configs/tiny.py`, `deepseek_v3` or `experiments/x.py:variant` -> validated ConfigDict."""
    return load_experiment(spec, overrides)[1]


def _exec_file(path: str) -> types.ModuleType:
    """Execute a config file as a module of its own (not on sys.path: experiment files
    import the package, never each other)."""
    name = "moe_jax_user_config_" + os.path.splitext(os.path.basename(path))[0]
    module_spec = importlib.util.spec_from_file_location(name, os.path.abspath(path))
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def split_overrides(argv) -> tuple[list[str], list[str]]:
    """Separate `--config.x=y` / `--config.x y` arguments from the rest of a command line.
    -> (the other arguments, overrides as "x=y")."""
    rest, overrides = [], []
    argv = list(argv)
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith(OVERRIDE_PREFIX):
            field = arg[len(OVERRIDE_PREFIX):]
            if "=" not in field:
                if i + 1 >= len(argv):
                    raise ValueError(f"{arg}: expected a value ({arg}=VALUE)")
                field = f"{field}={argv[i + 1]}"
                i += 1
            overrides.append(field)
        else:
            rest.append(arg)
        i += 1
    return rest, overrides


def _parse_value(text: str, current):
    """Parse `text` to the type of the field it replaces (strings may be unquoted)."""
    if isinstance(current, str):
        try:
            value = ast.literal_eval(text)
            return value if isinstance(value, str) else text
        except (ValueError, SyntaxError):
            return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text
    if isinstance(current, bool) and isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def bare_field(field: str) -> str:
    """"config.model.router" or "model.router" -> "model.router": a field may be written as
    `--config.<field>` flags and sweep() keys spell it, or without the prefix."""
    return field[len("config."):] if field.startswith("config.") else field


def apply_override(config: ml_collections.ConfigDict, assignment: str) -> None:
    """Apply `model.num_experts=8` (or `config.model.num_experts=8`) to `config`; unknown
    fields are an error naming them."""
    key, sep, text = assignment.partition("=")
    if not sep:
        raise ValueError(f"override {assignment!r}: expected FIELD=VALUE, e.g. model.top_k=4")
    key = bare_field(key.strip())
    node = config
    parts = key.split(".")
    for part in parts[:-1]:
        if part not in node:
            raise ConfigError(key, text, f"an existing field; {part!r} is not one of {sorted(node.keys())}")
        node = node[part]
    leaf = parts[-1]
    if leaf not in node:
        raise ConfigError(key, text, f"an existing field; choose from {sorted(node.keys())}")
    value = _parse_value(text.strip(), node[leaf])
    current = node[leaf]
    if current is not None and not isinstance(current, ml_collections.ConfigDict):
        expected = type(current)
        numeric = isinstance(current, (int, float)) and not isinstance(current, bool)
        ok = isinstance(value, expected) or (numeric and isinstance(value, (int, float))
                                             and not isinstance(value, bool))
        if not ok:
            raise ConfigError(key, value, f"a value of type {expected.__name__}")
    with node.ignore_type():
        node[leaf] = value


def validate(config: ml_collections.ConfigDict) -> None:
    """Validate every part of the config that has a validator; runs before any compute."""
    if "model" not in config:
        raise ConfigError("model", None, "a `model` section (see moe_jax/models/presets.py)")
    validate_model_config(config.model)
