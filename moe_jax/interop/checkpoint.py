"""A model directory: a model config and its weights, nothing of a training run.

`moe-jax convert --from-hf` writes one and `--from-ckpt` reads one; the GRM pipeline
saves each phase as one, distillation its teacher, LoRA its base. Readers use the one
loader, moe_jax.train.loader.load_model. On-disk layout (stable):

    CKPT_DIR/
      model_config.json   our `config.model` as JSON (ConfigDict.to_dict()); rebuild it
                          with ml_collections.ConfigDict(json.load(f))
      hf_config.json      the Hugging Face config.json it came from (absent if none); kept
                          so that exporting again reproduces the original checkpoint
      state/              orbax StandardCheckpointer of the dict
                          {"params": <params collection>, "router_bias": <router_bias collection>}
                          with exactly the structure `Transformer.from_config(model_config).init` gives
                          (scanned stacks, stacked experts, float arrays)

    params, router_bias, model_config, hf_config = load_converted(CKPT_DIR)
    model_config.dispatch = ...  # any field may be changed that keeps the shapes

The directory is assembled in a temporary sibling and renamed into place when complete.
"""

from __future__ import annotations

import json
import os

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from moe_jax.interop.staging import staged_directory

MODEL_CONFIG_FILE = "model_config.json"
HF_CONFIG_FILE = "hf_config.json"
STATE_DIR = "state"


def save_converted(directory: str, params, router_bias, model_config, hf_config: dict | None = None,
                   overwrite: bool = False) -> str:
    """Write the layout above; refuses a non-empty `directory` unless overwrite."""
    with staged_directory(directory, overwrite) as tmp:
        with open(os.path.join(tmp, MODEL_CONFIG_FILE), "w") as f:
            json.dump(model_config.to_dict(), f, indent=2, sort_keys=True)
        if hf_config is not None:
            with open(os.path.join(tmp, HF_CONFIG_FILE), "w") as f:
                json.dump(hf_config, f, indent=2, sort_keys=True)
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(os.path.join(tmp, STATE_DIR),
                              {"params": params, "router_bias": router_bias or {}})
    return directory


def load_converted(directory: str, shardings=None):
    """-> (params, router_bias, model_config, hf_config or None).

    shardings: None restores host arrays; otherwise a tree {"params": ..., "router_bias": ...}
    of jax Shardings (or one Sharding for all leaves) to restore onto.
    """
    directory = os.path.abspath(directory)
    with open(os.path.join(directory, MODEL_CONFIG_FILE)) as f:
        model_config = ml_collections.ConfigDict(json.load(f))
    hf_config = None
    if os.path.exists(os.path.join(directory, HF_CONFIG_FILE)):
        with open(os.path.join(directory, HF_CONFIG_FILE)) as f:
            hf_config = json.load(f)
    with ocp.StandardCheckpointer() as checkpointer:
        state_path = os.path.join(directory, STATE_DIR)
        if shardings is None:
            state = checkpointer.restore(state_path)
        else:
            shapes = checkpointer.metadata(state_path)
            shapes = getattr(shapes, "item_metadata", shapes)
            shapes = getattr(shapes, "tree", shapes)  # {"params": ..., "router_bias": ...} of ArrayMetadata
            if isinstance(shardings, jax.sharding.Sharding):
                shardings = jax.tree.map(lambda _: shardings, shapes)
            target = jax.tree.map(lambda meta, s: jax.ShapeDtypeStruct(meta.shape, meta.dtype, sharding=s),
                                  shapes, shardings)
            state = checkpointer.restore(state_path, target)
    state = jax.tree.map(lambda x: np.asarray(x) if shardings is None else x, state)
    return state["params"], state.get("router_bias", {}), model_config, hf_config
