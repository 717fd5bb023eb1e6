"""Hugging Face DeepSeek-V2 / V2-Lite / V3 checkpoints in and out.

    from moe_jax.interop import hf

    imported = hf.import_hf("DeepSeek-V2-Lite/", param_dtype="bfloat16")
    variables = {"params": imported.params, "router_bias": imported.router_bias}
    logits, _ = Transformer.from_config(imported.model_config).apply(variables, tokens)

    hf.export_hf("out/", imported.params, imported.router_bias, imported.model_config,
                 hf_config=imported.hf_config, dtype="bfloat16")

The pieces, one responsibility per file:
  hf_config.py      config.json <-> our `config.model` (architectures, routing, YaRN)
  hf_names.py       every HF tensor name <-> a slice of our (scanned, stacked) leaves
  safetensors_io.py streaming safetensors reader/writer (float8 included)
  fp8.py            128x128 block-scaled float8 (de)quantization
  hf_import.py      checks, then tensor-by-tensor loading (optionally onto shardings)
  hf_export.py      tensor-by-tensor shard writing into a directory renamed at the end
  checkpoint.py     the orbax layout `moe-jax convert` writes for the training loop
"""

from moe_jax.interop.hf_config import (ARCHITECTURES, HFLayout, UnsupportedCheckpointError,
                                       hf_config_from_model, model_config_from_hf)
from moe_jax.interop.hf_export import export_hf
from moe_jax.interop.hf_import import CheckpointMismatchError, HFImport, import_hf, read_hf_config
from moe_jax.interop.hf_names import Slot, checkpoint_slots

__all__ = ["ARCHITECTURES", "CheckpointMismatchError", "HFImport", "HFLayout", "Slot",
           "UnsupportedCheckpointError", "checkpoint_slots", "export_hf", "hf_config_from_model",
           "import_hf", "model_config_from_hf", "read_hf_config"]
