"""The one place `serve` and `export` read a saved model from."""

from __future__ import annotations

import argparse
import os
from typing import NamedTuple


def add_model_arguments(parser) -> None:
    """The arguments `load_model` takes, for the commands that load a saved model."""
    parser.add_argument("--checkpoint", required=True,
                        help="workdir, checkpoints dir, step dir, state dir, convert or quantize output")
    parser.add_argument("--config",
                        help="config file, optionally path.py:variant (a workdir needs it)")
    parser.add_argument("--override", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a config field (repeatable)")
    parser.add_argument("--tokenizer",
                        help="'char' or a tokenizer.json path (default: the config's)")


class LoadedModel(NamedTuple):
    model_config: object  # ml_collections.ConfigDict, `config.model`
    params: dict  # float, as the model's modules expect
    router_bias: dict
    tokenizer_name: str  # "char" or a tokenizer.json path, for data.tokenizer.get_tokenizer
    quantized: dict | None  # {"bits", "group_size"} when the weights went through int8


def load_model(checkpoint: str, config: str | None = None, overrides=(),
               quantize: bool = False) -> LoadedModel:
    """A training workdir (or one of its checkpoint directories), a `moe-jax convert`
    output or a `moe-jax quantize` output -> LoadedModel.

    config: `path.py:variant` for a checkpoint without a model_config.json (a training
    workdir), as `moe-jax sample --config` takes it; overrides: "field=value" strings.
    quantize: round the weights through weight-only int8 (group 128), so the model
    served is the one `moe-jax quantize --bits 8` would write; a quantised checkpoint is
    already that and loads as it is. Raises FileNotFoundError / ValueError with the
    argument at fault.
    """
    from moe_jax.infer.cli import _model_config, load_params, resolve_state_dir
    from moe_jax.quant.checkpoint import is_quantized_checkpoint, load_quantized
    from moe_jax.quant.weights import dequantize_tree, quantize_tree

    args = argparse.Namespace(config=config, override=list(overrides))
    info = None
    if is_quantized_checkpoint(checkpoint):
        params, router_bias, _, info = load_quantized(checkpoint)
        model_config, tokenizer_name = _model_config(args, checkpoint)
    else:
        state_dir = resolve_state_dir(checkpoint)
        model_config, tokenizer_name = _model_config(args, os.path.dirname(state_dir))
        params, router_bias = load_params(state_dir)
        if quantize:
            info = {"bits": 8, "group_size": 128}
            params = dequantize_tree(quantize_tree(params, 8, info["group_size"]),
                                     model_config.get("param_dtype", "float32"))
    return LoadedModel(model_config, params, router_bias or {}, tokenizer_name, info)
