"""Export to the Hugging Face layout: bit-exact round trips, MTP layers, transformers reloads."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from interop.tiny_hf import CONFIGS, build_hf_model, hf_logits, read_all_tensors, save_hf_model, torch
from moe_jax.interop.hf import export_hf, import_hf
from moe_jax.interop.safetensors_io import INDEX_FILE
from moe_jax.models.transformer import Transformer


def assert_same_variables(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.dtype == y.dtype and np.array_equal(np.asarray(x), np.asarray(y))


def assert_same_tensors(dir_a, dir_b):
    a, b = read_all_tensors(dir_a), read_all_tensors(dir_b)
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, name
        assert np.array_equal(a[name], b[name]), name  # integer views: bit for bit


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_export_of_import_reproduces_checkpoint_and_reimports_exactly(name, hf_checkpoints, tmp_path):
    _, directory = hf_checkpoints(name)
    imported = import_hf(directory, progress=False)
    out = export_hf(str(tmp_path / "out"), imported.params, imported.router_bias, imported.model_config,
                    hf_config=imported.hf_config, max_shard_size="20KB", progress=False)
    assert_same_tensors(directory, out)
    assert os.path.exists(os.path.join(out, INDEX_FILE))
    with open(os.path.join(directory, "config.json")) as f, open(os.path.join(out, "config.json")) as g:
        assert json.load(f) == json.load(g)
    again = import_hf(out, progress=False)
    assert_same_variables((imported.params, imported.router_bias), (again.params, again.router_bias))
    assert again.model_config == imported.model_config


def test_bfloat16_checkpoint_round_trips_bit_for_bit(tmp_path):
    model = build_hf_model("v3_group_yarn", seed=3)
    directory = save_hf_model(model, str(tmp_path / "bf16"), dtype=torch.bfloat16)
    imported = import_hf(directory, progress=False)  # float32 params, exactly representable
    out = export_hf(str(tmp_path / "out"), imported.params, imported.router_bias, imported.model_config,
                    hf_config=imported.hf_config, progress=False)  # dtype from config.json
    assert_same_tensors(directory, out)


@pytest.mark.parametrize("name", ["v3_group_yarn", "v2_group_tied"])
def test_export_without_base_config_loads_in_transformers(name, hf_checkpoints, tmp_path):
    model, directory = hf_checkpoints(name)
    imported = import_hf(directory, progress=False)
    out = export_hf(str(tmp_path / "fresh"), imported.params, imported.router_bias, imported.model_config,
                    dtype="float32", progress=False)
    with open(os.path.join(out, "config.json")) as f:
        assert "rope_scaling" in json.load(f)  # the published (legacy) rope spelling
    reloaded = type(model).from_pretrained(out).eval()
    tokens = np.random.RandomState(0).randint(0, imported.model_config.vocab_size, (2, 12))
    np.testing.assert_array_equal(hf_logits(reloaded, tokens), hf_logits(model, tokens))


def _add_mtp_layer(src: str, dst: str, rng) -> dict:
    """Copy a V3 checkpoint and append one MTP layer (HF layer num_hidden_layers) in a new shard."""
    from safetensors.numpy import save_file

    shutil.copytree(src, dst)
    with open(os.path.join(dst, "config.json")) as f:
        cfg = json.load(f)
    tensors = read_all_tensors(src)
    last, mtp = cfg["num_hidden_layers"] - 1, cfg["num_hidden_layers"]
    d = cfg["hidden_size"]
    extra = {}
    for name, value in tensors.items():
        if name.startswith(f"model.layers.{last}."):
            new = name.replace(f"model.layers.{last}.", f"model.layers.{mtp}.")
            extra[new] = rng.standard_normal(value.shape).astype(np.float32)
    extra[f"model.layers.{mtp}.enorm.weight"] = rng.standard_normal(d).astype(np.float32)
    extra[f"model.layers.{mtp}.hnorm.weight"] = rng.standard_normal(d).astype(np.float32)
    extra[f"model.layers.{mtp}.eh_proj.weight"] = rng.standard_normal((d, 2 * d)).astype(np.float32)
    extra[f"model.layers.{mtp}.shared_head.norm.weight"] = rng.standard_normal(d).astype(np.float32)
    extra[f"model.layers.{mtp}.embed_tokens.weight"] = tensors["model.embed_tokens.weight"]
    extra[f"model.layers.{mtp}.shared_head.head.weight"] = tensors["lm_head.weight"]
    save_file(extra, os.path.join(dst, "model-mtp.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(dst, INDEX_FILE)) as f:
        index = json.load(f)
    index["weight_map"].update({k: "model-mtp.safetensors" for k in extra})
    with open(os.path.join(dst, INDEX_FILE), "w") as f:
        json.dump(index, f)
    cfg["num_nextn_predict_layers"] = 1
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(cfg, f)
    return extra


def test_mtp_layers_import_run_and_round_trip(hf_checkpoints, tmp_path):
    model, directory = hf_checkpoints("v3_group_yarn")
    mtp_dir = str(tmp_path / "with_mtp")
    extra = _add_mtp_layer(directory, mtp_dir, np.random.RandomState(0))
    imported = import_hf(mtp_dir, progress=False)
    m = imported.model_config
    assert m.mtp_depth == 1
    mtp, n = imported.params["mtp_0"], model.config.num_hidden_layers
    np.testing.assert_array_equal(mtp["proj"], extra[f"model.layers.{n}.eh_proj.weight"].T)
    np.testing.assert_array_equal(mtp["embed_norm"]["scale"], extra[f"model.layers.{n}.enorm.weight"])
    np.testing.assert_array_equal(mtp["layer"]["moe"]["wi_up"][3],
                                  extra[f"model.layers.{n}.mlp.experts.3.up_proj.weight"].T)
    np.testing.assert_array_equal(imported.router_bias["mtp_0"]["layer"]["moe"]["router"]["bias"],
                                  extra[f"model.layers.{n}.mlp.gate.e_score_correction_bias"])

    tokens = np.zeros((1, 8), np.int32)
    _, extras = jax.eval_shape(Transformer.from_config(m).apply,
                               {"params": imported.params, "router_bias": imported.router_bias}, tokens)
    assert extras["mtp_logits"].shape == (1, 1, 8, m.vocab_size)

    out = export_hf(str(tmp_path / "out"), imported.params, imported.router_bias, m,
                    hf_config=imported.hf_config, progress=False)
    assert_same_tensors(mtp_dir, out)

    without = import_hf(mtp_dir, include_mtp=False, progress=False)
    assert without.model_config.mtp_depth == 0 and "mtp_0" not in without.params


def test_export_from_unscanned_layers_matches_scanned(hf_checkpoints, tmp_path):
    _, directory = hf_checkpoints("v3_group_yarn")
    imported = import_hf(directory, progress=False)
    m = imported.model_config.copy_and_resolve_references()
    m.scan_layers = False
    unstack = lambda tree, i: jax.tree.map(lambda x: x[i], tree)
    params, bias = dict(imported.params), dict(imported.router_bias)
    for stack, count in (("dense_layers", m.num_dense_layers), ("moe_layers", m.num_layers - m.num_dense_layers)):
        layers = params.pop(stack)
        params.update({f"{stack}_{i}": unstack(layers, i) for i in range(count)})
        if stack in bias:
            layers = bias.pop(stack)
            bias.update({f"{stack}_{i}": unstack(layers, i) for i in range(count)})
    out = export_hf(str(tmp_path / "unscanned"), params, bias, m, hf_config=imported.hf_config, progress=False)
    assert_same_tensors(directory, out)


def test_sigmoid_router_without_bias_exports_zero_correction_bias(hf_checkpoints, tmp_path):
    _, directory = hf_checkpoints("v3_group_yarn")
    imported = import_hf(directory, progress=False)
    m = imported.model_config.copy_and_resolve_references()
    m.router = "sigmoid"
    out = export_hf(str(tmp_path / "nobias"), imported.params, {}, m, progress=False)
    tensors = read_all_tensors(out)
    assert not tensors["model.layers.1.mlp.gate.e_score_correction_bias"].any()
