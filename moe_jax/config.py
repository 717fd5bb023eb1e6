"""Loading configs from `path.py:arg` specs and applying `key.path=value` overrides.

A config file defines `get_config(arg=None) -> ConfigDict` (big_vision style). The same
spec syntax works for `configs/` presets and `experiments/` files.
"""

from __future__ import annotations

import ast
import importlib.util
import os

import ml_collections

from moe_jax.models.config import ConfigError, validate_model_config


def load_config(spec: str, overrides: list[str] | tuple[str, ...] = ()) -> ml_collections.ConfigDict:
    """`configs/tiny.py` or `experiments/x.py:variant` -> validated ConfigDict."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path!r} does not exist (spec {spec!r})")
    module_spec = importlib.util.spec_from_file_location(
        "moe_jax_user_config_" + os.path.splitext(os.path.basename(path))[0], path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise AttributeError(f"config file {path!r} defines no get_config(arg)")
    config = module.get_config(arg or None)
    for override in overrides:
        apply_override(config, override)
    validate(config)
    return config


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


def apply_override(config: ml_collections.ConfigDict, assignment: str) -> None:
    """Apply `model.num_experts=8` to `config`; unknown fields are an error naming them."""
    key, sep, text = assignment.partition("=")
    if not sep:
        raise ValueError(f"override {assignment!r}: expected FIELD=VALUE, e.g. model.top_k=4")
    node = config
    parts = key.strip().split(".")
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
        raise ConfigError("model", None, "a `model` section (see configs/tiny.py)")
    validate_model_config(config.model)
