"""The one loader of a finished run's model: config, parameters and router biases.

Every reader (sampling, quantising, serving, RL and the GRM starting from a model, a
distillation teacher, a LoRA base, analyses) calls `load_model(path)`, whatever wrote
the path:

    a training workdir      `<workdir>/checkpoints/<step>/state` (the newest step whose
                            seal verifies), or its `checkpoints/` dir, one `<step>` dir
                            or that step's `state` dir; the model config comes from the
                            caller or from the workdir's recorded `config.json`
    a model directory       `model_config.json` + `state/` (`moe-jax convert`, a saved
                            phase of the GRM pipeline, a saved teacher or base model);
                            see moe_jax.interop.checkpoint
    a quantised export      `quantization.json` + safetensors (`moe-jax quantize`),
                            dequantised on load; see moe_jax.interop.quantized

Nothing is moved, changed or deleted: a checkpoint that cannot be read is an error
naming the path and why. A model directory brings its own model config; the caller's
runtime settings (`RUNTIME_FIELDS`: compute dtype, master dtype, remat) are kept on it.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import ml_collections
import numpy as np

from moe_jax.interop.checkpoint import MODEL_CONFIG_FILE, load_converted
from moe_jax.interop.quantized import is_quantized_checkpoint, load_quantized
from moe_jax.models.config import ConfigError
from moe_jax.models.param_count import abstract_params
from moe_jax.train import run_config
from moe_jax.train.checkpoint import CHECKPOINT_DIR, Checkpointer, CorruptCheckpointError
from moe_jax.train.run_config import RUN_CONFIG_FILE

RUNTIME_FIELDS = ("dtype", "param_dtype", "remat_policy")


@dataclasses.dataclass
class LoadedModel:
    model_config: ml_collections.ConfigDict  # the `model` section
    params: dict
    router_bias: dict
    source: str  # "workdir", "model_dir" or "quantized"
    path: str  # the directory read
    step: int | None = None  # the training step, for a workdir
    quantization: dict | None = None  # {"bits", "group_size"} of a quantised export
    hf_config: dict | None = None  # the Hugging Face config a converted model came from
    run_config: ml_collections.ConfigDict | None = None  # a workdir's whole recorded config

    @property
    def tokenizer(self) -> str:
        """The tokenizer the run trained with (a workdir's data.tokenizer), else "char"."""
        data = (self.run_config or {}).get("data", {})
        return data.get("tokenizer", "char") if data else "char"


def read_run_config(workdir: str) -> ml_collections.ConfigDict | None:
    """The config a training workdir recorded when it started (None if it recorded none)."""
    recorded = run_config.read(workdir)
    return None if recorded is None else ml_collections.ConfigDict(recorded)


def _training_workdir(path: str) -> tuple[str, int | None] | None:
    """(workdir, step or None for the newest) when `path` is a training workdir or a
    directory inside its checkpoints; None otherwise."""
    path = os.path.abspath(path)
    if os.path.basename(path) == "state":
        path = os.path.dirname(path)
    if os.path.isdir(os.path.join(path, CHECKPOINT_DIR)):
        return path, None
    parent = os.path.dirname(path)
    if os.path.basename(path) == CHECKPOINT_DIR:
        return parent, None
    if os.path.basename(path).isdigit() and os.path.basename(parent) == CHECKPOINT_DIR:
        return os.path.dirname(parent), int(os.path.basename(path))
    return None


def _with_runtime_fields(saved, caller):
    if caller is not None:
        for name in RUNTIME_FIELDS:
            if name in caller:
                saved[name] = caller[name]
    return saved


def load_model(path: str, model_config=None, *, dtype=None, log=print) -> LoadedModel:
    """The model at `path` (see the module docstring). model_config: the `model` section
    to read a workdir with (default: the workdir's recorded config), or whose runtime
    fields override a model directory's. dtype: what a quantised export dequantises to
    (default: its param_dtype). Raises FileNotFoundError when `path` holds no model and
    CorruptCheckpointError when it holds one that cannot be read."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: no such directory")
    if is_quantized_checkpoint(path):
        params, router_bias, saved, info = load_quantized(path, dtype)
        return LoadedModel(_with_runtime_fields(saved, model_config), params, router_bias,
                           "quantized", os.path.abspath(path), quantization=info)
    if os.path.exists(os.path.join(path, MODEL_CONFIG_FILE)):
        params, router_bias, saved, hf_config = load_converted(path)
        return LoadedModel(_with_runtime_fields(saved, model_config), params, router_bias,
                           "model_dir", os.path.abspath(path), hf_config=hf_config)
    found = _training_workdir(path)
    if found is None:
        raise FileNotFoundError(
            f"{path}: not a training workdir (checkpoints/), a model directory "
            f"({MODEL_CONFIG_FILE}) or a quantised export")
    workdir, step = found
    run_config = read_run_config(workdir)
    if model_config is None:
        if run_config is None:
            raise FileNotFoundError(f"{workdir} records no {RUN_CONFIG_FILE}: pass the run's config "
                                    f"(--config) to read its checkpoints")
        model_config = run_config.model
    checkpointer = Checkpointer(workdir, keep=1000, async_save=False, log=log)
    try:
        restored = checkpointer.read_state(step)
    finally:
        checkpointer.close()
    if restored is None:
        raise FileNotFoundError(f"{workdir}: no checkpoint in {os.path.join(workdir, CHECKPOINT_DIR)}")
    state, read_step = restored
    if "params" not in state:
        raise CorruptCheckpointError(f"{workdir} step {read_step} holds no 'params' (keys: {sorted(state)})")
    params = jax.tree.map(np.asarray, state["params"])
    router_bias = jax.tree.map(np.asarray, state.get("router_bias") or {})
    _check_shapes(params, model_config, run_config, workdir)
    return LoadedModel(model_config, params, router_bias, "workdir", workdir, step=read_step,
                       run_config=run_config)


def _shapes(model_config):
    return jax.tree.map(lambda leaf: tuple(leaf.shape), abstract_params(model_config))


def _check_shapes(params, model_config, run_config, workdir: str) -> None:
    """A workdir read with the caller's model config must hold that model's parameters:
    otherwise the caller's first use of them fails deep inside a tree map. The error names
    each model field whose recorded value alone would change the parameter shapes."""
    recorded = run_config.model.to_dict() if run_config is not None and "model" in run_config else {}
    if recorded and all(model_config.get(name) == value for name, value in recorded.items()
                        if name not in RUNTIME_FIELDS):
        return  # the config the checkpoint was written with: nothing to trace
    expected = _shapes(model_config)
    if expected == jax.tree.map(np.shape, params):
        return
    shaping = []
    for name, value in recorded.items():
        if name in RUNTIME_FIELDS or model_config.get(name) == value:
            continue
        trial = ml_collections.ConfigDict(model_config.to_dict())
        trial[name] = value
        try:
            if _shapes(trial) != expected:
                shaping.append(name)
        except (ValueError, TypeError):  # alone the recorded value is not a valid model: it shapes too
            shaping.append(name)
    if not shaping:
        raise ConfigError("model", "(the section given)", f"the parameter shapes of the checkpoint in "
                          f"{workdir} (its config.json is missing or does not match it)")
    raise ConfigError(f"model.{shaping[0]}", model_config.get(shaping[0]), (
        f"{recorded[shaping[0]]!r}, as the run in {workdir} trained it; fields that change the "
        f"parameter shapes: " + ", ".join(f"model.{n} = {model_config.get(n)!r} vs {recorded[n]!r}"
                                          for n in shaping)))
