"""Bad checkpoints and variables fail with every offending name listed; nothing is written."""

import json
import os
import shutil

import numpy as np
import pytest

from interop.tiny_hf import read_all_tensors, rewrite_config
from moe_jax.cli import main as cli_main
from moe_jax.interop import safetensors_io
from moe_jax.interop.hf import CheckpointMismatchError, UnsupportedCheckpointError, export_hf, import_hf
from moe_jax.interop.safetensors_io import INDEX_FILE


def _edit_tensors(src: str, dst: str, drop=(), add=None, replace=None):
    """Copy a float32 checkpoint with some tensors dropped, added (own shard) or replaced."""
    from safetensors.numpy import save_file

    shutil.copytree(src, dst)
    with open(os.path.join(dst, INDEX_FILE)) as f:
        index = json.load(f)
    tensors = read_all_tensors(src)
    for name in list(drop) + list(replace or {}):
        file = index["weight_map"][name]
        with_file = {k: tensors[k] for k, v in index["weight_map"].items() if v == file}
        with_file.pop(name)
        if name in (replace or {}):
            with_file[name] = replace[name]
        else:
            del index["weight_map"][name]
        save_file(with_file, os.path.join(dst, file), metadata={"format": "pt"})
        tensors.update(with_file)
    if add:
        save_file(add, os.path.join(dst, "extra.safetensors"), metadata={"format": "pt"})
        index["weight_map"].update({k: "extra.safetensors" for k in add})
    with open(os.path.join(dst, INDEX_FILE), "w") as f:
        json.dump(index, f)
    return dst


@pytest.fixture
def v3_dir(hf_checkpoints):
    return hf_checkpoints("v3_group_yarn")[1]


def test_missing_unexpected_and_misshaped_tensors_are_all_listed(v3_dir, tmp_path):
    bad = _edit_tensors(
        v3_dir, str(tmp_path / "bad"),
        drop=["model.layers.2.mlp.experts.1.up_proj.weight", "model.layers.0.self_attn.kv_b_proj.weight"],
        add={"model.layers.0.self_attn.rotary_emb.inv_freq": np.zeros(4, np.float32),
             "vision_tower.proj.weight": np.zeros((2, 2), np.float32)},
        replace={"model.layers.1.mlp.experts.3.down_proj.weight": np.zeros((32, 17), np.float32)})
    with pytest.raises(CheckpointMismatchError) as info:
        import_hf(bad, progress=False)
    message = str(info.value)
    for name in ("model.layers.2.mlp.experts.1.up_proj.weight", "model.layers.0.self_attn.kv_b_proj.weight",
                 "model.layers.0.self_attn.rotary_emb.inv_freq", "vision_tower.proj.weight"):
        assert name in message
    assert "model.layers.1.mlp.experts.3.down_proj.weight: checkpoint [32, 17], model expects [32, 16]" in message
    assert info.value.missing == sorted(["model.layers.2.mlp.experts.1.up_proj.weight",
                                         "model.layers.0.self_attn.kv_b_proj.weight"])


def test_config_that_disagrees_with_tensors_reports_shapes(v3_dir, tmp_path):
    bad = str(tmp_path / "bad")
    shutil.copytree(v3_dir, bad)
    rewrite_config(bad, moe_intermediate_size=20)
    # 2 MoE layers x (4 experts + 1 shared) x 3 projections = 30 tensors, all listed
    with pytest.raises(CheckpointMismatchError, match=r"shape mismatches \(30\)") as info:
        import_hf(bad, progress=False)
    assert "... and" not in str(info.value)
    assert "model.layers.2.mlp.shared_experts.down_proj.weight: checkpoint [32, 16], model expects [32, 20]" \
        in str(info.value)


def test_unsupported_architectures_and_settings_are_named(v3_dir, tmp_path):
    bad = str(tmp_path / "llama")
    shutil.copytree(v3_dir, bad)
    rewrite_config(bad, model_type="llama", architectures=["LlamaForCausalLM"])
    with pytest.raises(UnsupportedCheckpointError, match="'llama'.*LlamaForCausalLM"):
        import_hf(bad, progress=False)
    rewrite_config(bad, model_type="deepseek_v3", architectures=["DeepseekV3ForCausalLM"], hidden_act="gelu",
                   attention_bias=True, moe_layer_freq=2,
                   rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0})
    with pytest.raises(UnsupportedCheckpointError) as info:
        import_hf(bad, progress=False)
    assert [p.split()[0] for p in info.value.problems] == ["attention_bias", "hidden_act", "moe_layer_freq", "rope"]


def test_failed_conversion_writes_nothing(v3_dir, tmp_path, capsys):
    bad = _edit_tensors(v3_dir, str(tmp_path / "bad"), drop=["model.norm.weight"])
    target = tmp_path / "out" / "ckpt"
    assert cli_main(["convert", "--from-hf", bad, "--to", str(target), "--quiet"]) == 2
    assert "model.norm.weight" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() or os.listdir(tmp_path / "out") == []


def test_export_of_wrong_variables_lists_them_and_writes_nothing(v3_dir, tmp_path):
    imported = import_hf(v3_dir, progress=False)
    params = dict(imported.params)
    params["final_norm"] = {"scale": np.zeros(33, np.float32)}
    params["extra_head"] = np.zeros((2, 2), np.float32)
    del params["head"]
    with pytest.raises(CheckpointMismatchError) as info:
        export_hf(str(tmp_path / "out"), params, imported.router_bias, imported.model_config, progress=False)
    message = str(info.value)
    assert "params/head" in message and "params/extra_head" in message
    assert "params/final_norm/scale: variables [33], model expects [32]" in message
    assert os.listdir(tmp_path) == []


def test_export_interrupted_midway_leaves_no_directory(v3_dir, tmp_path, monkeypatch):
    imported = import_hf(v3_dir, progress=False)
    real, calls = safetensors_io.write_shard, []

    def failing_write_shard(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(safetensors_io, "write_shard", failing_write_shard)
    with pytest.raises(OSError, match="disk full"):
        export_hf(str(tmp_path / "out"), imported.params, imported.router_bias, imported.model_config,
                  max_shard_size="20KB", progress=False)
    assert os.listdir(tmp_path) == []


def test_existing_target_is_kept_unless_overwrite(v3_dir, tmp_path):
    imported = import_hf(v3_dir, progress=False)
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    args = (str(target), imported.params, imported.router_bias, imported.model_config)
    with pytest.raises(FileExistsError):
        export_hf(*args, progress=False)
    assert os.listdir(target) == ["keep.txt"]
    export_hf(*args, overwrite=True, progress=False)
    assert "keep.txt" not in os.listdir(target) and "config.json" in os.listdir(target)
    assert sorted(os.listdir(tmp_path)) == ["out"]
