"""`moe-jax convert` both ways, through the orbax layout of interop/checkpoint.py."""

import json
import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from interop.test_hf_export import assert_same_tensors, assert_same_variables
from moe_jax.cli import main as cli_main
from moe_jax.interop.checkpoint import HF_CONFIG_FILE, MODEL_CONFIG_FILE, STATE_DIR, load_converted
from moe_jax.interop.hf import import_hf


def test_convert_hf_to_orbax_and_back_reproduces_the_checkpoint(hf_checkpoints, tmp_path, capsys):
    _, directory = hf_checkpoints("v3_group_yarn")
    ckpt, out = str(tmp_path / "ckpt"), str(tmp_path / "hf_out")
    assert cli_main(["convert", "--from-hf", directory, "--to", ckpt, "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["model_type"] == "deepseek_v3"
    assert sorted(os.listdir(ckpt)) == sorted([HF_CONFIG_FILE, MODEL_CONFIG_FILE, STATE_DIR])

    params, router_bias, model_config, hf_config = load_converted(ckpt)
    imported = import_hf(directory, progress=False)
    assert_same_variables((params, router_bias), (imported.params, imported.router_bias))
    assert model_config == imported.model_config and hf_config == imported.hf_config

    assert cli_main(["convert", "--from-ckpt", ckpt, "--to-hf", out, "--max-shard-size", "20KB", "--quiet"]) == 0
    assert_same_tensors(directory, out)


def test_convert_restores_onto_shardings(hf_checkpoints, tmp_path):
    _, directory = hf_checkpoints("v2_lite")
    ckpt = str(tmp_path / "ckpt")
    assert cli_main(["convert", "--from-hf", directory, "--to", ckpt, "--dtype", "bfloat16", "--quiet"]) == 0
    device = jax.sharding.SingleDeviceSharding(jax.devices()[1])
    params, router_bias, model_config, _ = load_converted(ckpt, shardings=device)
    assert model_config.param_dtype == "bfloat16" and router_bias == {}
    leaf = params["moe_layers"]["moe"]["wi_gate"]
    assert isinstance(leaf, jax.Array) and leaf.sharding == device and leaf.dtype == jax.numpy.bfloat16

    mesh = Mesh(np.array(jax.devices()[:8]), ("expert",))  # v2_lite has 8 experts
    by_expert, replicated = NamedSharding(mesh, P(None, "expert")), NamedSharding(mesh, P())
    tree = {"params": jax.tree_util.tree_map_with_path(
        lambda path, x: by_expert if path[-1].key in ("wi_gate", "wi_up", "wo") else replicated, params),
        "router_bias": {}}
    params, _, _, _ = load_converted(ckpt, shardings=tree)
    assert params["moe_layers"]["moe"]["wi_gate"].sharding == by_expert
    leaf = params["moe_layers"]["moe"]["wi_gate"]
    want = import_hf(directory, param_dtype="bfloat16", progress=False).params["moe_layers"]["moe"]["wi_gate"]
    np.testing.assert_array_equal(np.asarray(leaf), want)


def test_convert_usage_errors(hf_checkpoints, tmp_path, capsys):
    _, directory = hf_checkpoints("v2_lite")
    assert cli_main(["convert", "--from-hf", directory, "--to-hf", str(tmp_path / "x")]) == 2
    assert "--from-hf needs --to" in capsys.readouterr().err
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "file").write_text("x")
    assert cli_main(["convert", "--from-hf", directory, "--to", str(existing), "--quiet"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert os.listdir(existing) == ["file"]
