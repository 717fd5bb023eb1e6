"""Block-scaled FP8 checkpoints: exact dequantization, models within FP8 error."""

import json
import os
import shutil

import ml_dtypes
import numpy as np
import pytest

from interop.tiny_hf import build_hf_model, hf_logits, no_drop, our_forward, read_all_tensors, save_hf_model, torch
from moe_jax.interop.hf_config import QUANTIZATION_CONFIG
from moe_jax.layers import fp8
from moe_jax.interop.hf import export_hf, import_hf

F8 = ml_dtypes.float8_e4m3fn


def reference_quantize(w, block=128):
    """Obviously-correct loops: each 128x128 block (edge blocks partial) scaled to amax 448."""
    rows, cols = w.shape
    nr, nc = -(-rows // block), -(-cols // block)
    q, s = np.zeros((rows, cols), F8), np.zeros((nr, nc), np.float32)
    for i in range(nr):
        for j in range(nc):
            tile = w[i * block:(i + 1) * block, j * block:(j + 1) * block].astype(np.float32)
            s[i, j] = np.abs(tile).max() / np.float32(448.0)
            q[i * block:(i + 1) * block, j * block:(j + 1) * block] = (tile / s[i, j]).astype(F8)
    return q, s


def reference_dequantize(q, s, block=128):
    out = np.zeros(q.shape, np.float32)
    for i in range(q.shape[0]):
        for j in range(q.shape[1]):
            out[i, j] = np.float32(q[i, j]) * s[i // block, j // block]
    return out


def test_dequantize_matches_per_element_reference_with_partial_blocks():
    rng = np.random.RandomState(0)
    w = (rng.standard_normal((300, 260)) * rng.uniform(0.01, 3, (300, 1))).astype(np.float32)
    q, s = reference_quantize(w)
    assert s.shape == (3, 3)  # 300 = 128 + 128 + 44 rows, 260 = 128 + 128 + 4 columns
    np.testing.assert_array_equal(fp8.dequantize_weight(q, s), reference_dequantize(q, s))
    # e4m3 keeps 3 mantissa bits: relative rounding error at most 2^-4 (normal range)
    big = np.abs(w) > 1e-2 * np.abs(w).max()
    assert np.all(np.abs(fp8.dequantize_weight(q, s) - w)[big] <= 2.0 ** -4 * np.abs(w)[big] + 1e-12)
    bf16 = fp8.dequantize_weight(q, s, ml_dtypes.bfloat16)
    np.testing.assert_array_equal(bf16, reference_dequantize(q, s).astype(ml_dtypes.bfloat16))


def test_quantize_matches_reference():
    w = np.random.RandomState(1).standard_normal((130, 257)).astype(np.float32)
    w[:128, :128] = 0.0  # an all-zero block gets scale 1, not a division by zero
    q, s = fp8.quantize_weight(w)
    with np.errstate(invalid="ignore"):  # the reference divides the zero block by 0
        rq, rs = reference_quantize(w)
    rs[0, 0] = 1.0
    np.testing.assert_array_equal(s, rs)
    np.testing.assert_array_equal(q[:, 128:].view(np.uint8), rq[:, 128:].view(np.uint8))
    assert not q[:128, :128].astype(np.float32).any()


def _is_quantized(name, value):
    """DeepSeek's FP8 set: projections in decoder layers, not the router, embeddings, head, norms."""
    return name.startswith("model.layers.") and name.endswith("proj.weight") and value.ndim == 2


def _rewrite_checkpoint(src: str, dst: str, transform, config_changes=None):
    """Copy a float32 checkpoint, replacing each shard's tensors by transform(name, value) -> dict."""
    from safetensors.torch import save_file

    shutil.copytree(src, dst)
    tensors, weight_map = read_all_tensors(src), {}
    for file in sorted(os.listdir(dst)):
        if file.endswith(".safetensors"):
            out = {}
            for name in _names_in(os.path.join(dst, file)):
                out.update(transform(name, tensors[name]))
            save_file(out, os.path.join(dst, file), metadata={"format": "pt"})
            weight_map.update({n: file for n in out})
    index_path = os.path.join(dst, "model.safetensors.index.json")
    with open(index_path) as f:
        index = json.load(f)
    index["weight_map"] = weight_map
    with open(index_path, "w") as f:
        json.dump(index, f)
    with open(os.path.join(dst, "config.json")) as f:
        cfg = json.load(f)
    cfg.update(config_changes or {})
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(cfg, f)


def _quantize_checkpoint(src: str, dst: str) -> dict:
    """The FP8 checkpoint DeepSeek would ship: float8 projections + <name>_scale_inv."""
    quantized = {}

    def transform(name, value):
        if not _is_quantized(name, value):
            return {name: torch.from_numpy(value)}
        q, s = quantized[name] = reference_quantize(value)
        return {name: torch.from_numpy(q.view(np.uint8)).view(torch.float8_e4m3fn),
                name + "_scale_inv": torch.from_numpy(s)}

    _rewrite_checkpoint(src, dst, transform, {"quantization_config": dict(QUANTIZATION_CONFIG)})
    return quantized


def _dequantized_checkpoint(src: str, dst: str, quantized: dict):
    """The float32 checkpoint holding exactly the FP8 checkpoint's values (for transformers)."""
    def transform(name, value):
        if name in quantized:
            value = reference_dequantize(*quantized[name])
        return {name: torch.from_numpy(value)}

    _rewrite_checkpoint(src, dst, transform)


def _names_in(path):
    from safetensors import safe_open
    with safe_open(path, "np") as f:
        return set(f.keys())


@pytest.fixture(scope="module")
def fp8_case(tmp_path_factory):
    # Widths above 128 that are not multiples of it: several blocks, partial edge blocks.
    # DeepSeek's own init scale (0.02): larger weights make tiny random routers flip
    # experts on small perturbations, which would measure routing chaos, not FP8.
    model = build_hf_model("v3_group_yarn", seed=5, hidden_size=64, intermediate_size=200,
                           moe_intermediate_size=136, q_lora_rank=144, initializer_range=0.02)
    root = tmp_path_factory.mktemp("fp8")
    float_dir = save_hf_model(model, str(root / "float"), max_shard_size="200KB")
    quantized = _quantize_checkpoint(float_dir, str(root / "fp8"))
    return model, float_dir, str(root / "fp8"), quantized


def test_fp8_checkpoint_dequantizes_to_expected_values(fp8_case):
    _, _, fp8_dir, quantized = fp8_case
    assert read_all_tensors(fp8_dir)["model.layers.0.mlp.gate_proj.weight"].dtype == np.uint8  # really F8
    q, s = quantized["model.layers.0.mlp.gate_proj.weight"]
    assert s.shape == (2, 1)  # [200, 64]: a full and a partial row block
    imported = import_hf(fp8_dir, progress=False)
    np.testing.assert_array_equal(imported.params["dense_layers"]["mlp"]["gate"][0], reference_dequantize(q, s).T)
    q, s = quantized["model.layers.2.mlp.experts.3.down_proj.weight"]
    assert s.shape == (1, 2)  # [64, 136]
    np.testing.assert_array_equal(imported.params["moe_layers"]["moe"]["wo"][1, 3], reference_dequantize(q, s).T)
    bf16 = import_hf(fp8_dir, param_dtype="bfloat16", progress=False)
    assert bf16.params["moe_layers"]["moe"]["wo"].dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(bf16.params["moe_layers"]["moe"]["wo"][1, 3],
                                  reference_dequantize(q, s).T.astype(ml_dtypes.bfloat16))


def test_model_from_fp8_checkpoint_matches_float_model_within_fp8_error(fp8_case, tmp_path):
    model, float_dir, fp8_dir, quantized = fp8_case
    tokens = np.random.RandomState(2).randint(0, model.config.vocab_size, (2, 16))
    imported = import_hf(fp8_dir, progress=False)
    ours = np.asarray(our_forward(no_drop(imported.model_config))(
        {"params": imported.params, "router_bias": imported.router_bias}, tokens))

    # Exactly the model transformers builds from the dequantized weights ...
    _dequantized_checkpoint(float_dir, str(tmp_path / "dequantized"), quantized)
    dequantized = type(model).from_pretrained(str(tmp_path / "dequantized")).eval()
    np.testing.assert_allclose(ours, hf_logits(dequantized, tokens), atol=1e-4, rtol=0)

    # ... and within FP8 error of the float model: e4m3 rounds each weight by at most
    # 2^-4 of itself (~2-3% RMS); the logits stay within that (measured: 2.3% relative
    # RMS, max error 2.3% of the largest logit, over four seeds 2.2-2.5%), far above
    # float32 noise.
    want = hf_logits(model, tokens)
    relative_rms = np.sqrt(np.mean((ours - want) ** 2) / np.mean(want ** 2))
    assert 1e-3 < relative_rms < 2.0 ** -4
    assert np.abs(ours - want).max() < 2.0 ** -4 * np.abs(want).max()
    assert (ours.argmax(-1) == want.argmax(-1)).mean() > 0.85


def test_fp8_export_reimports_within_fp8_error(fp8_case, tmp_path):
    _, float_dir, _, _ = fp8_case
    imported = import_hf(float_dir, progress=False)
    out = export_hf(str(tmp_path / "fp8_out"), imported.params, imported.router_bias, imported.model_config,
                    hf_config=imported.hf_config, fp8=True, progress=False)
    with open(os.path.join(out, "config.json")) as f:
        assert json.load(f)["quantization_config"]["weight_block_size"] == [128, 128]
    names = read_all_tensors(out)
    assert "model.layers.2.mlp.experts.0.up_proj.weight_scale_inv" in names
    assert "model.layers.2.mlp.gate.weight_scale_inv" not in names  # the router stays float
    again = import_hf(out, progress=False)
    w, w8 = imported.params["moe_layers"]["moe"]["wi_up"], again.params["moe_layers"]["moe"]["wi_up"]
    assert np.all(np.abs(w8 - w) <= 2.0 ** -4 * np.abs(w).max())
    np.testing.assert_array_equal(again.params["embed"]["embedding"], imported.params["embed"]["embedding"])


def test_fp8_weight_without_its_scale_is_reported(fp8_case, tmp_path):
    from safetensors.torch import load_file, save_file

    from moe_jax.interop.hf import CheckpointMismatchError

    _, _, fp8_dir, _ = fp8_case
    bad = str(tmp_path / "bad")
    shutil.copytree(fp8_dir, bad)
    name = "model.layers.1.mlp.experts.2.up_proj.weight_scale_inv"
    index_path = os.path.join(bad, "model.safetensors.index.json")
    with open(index_path) as f:
        index = json.load(f)
    shard = os.path.join(bad, index["weight_map"].pop(name))
    tensors = load_file(shard)
    del tensors[name]
    save_file(tensors, shard, metadata={"format": "pt"})
    with open(index_path, "w") as f:
        json.dump(index, f)
    with pytest.raises(CheckpointMismatchError, match="missing tensors \\(1\\):\n    " + name):
        import_hf(bad, progress=False)
