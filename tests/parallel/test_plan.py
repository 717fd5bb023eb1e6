"""`moe-jax plan`: per-device memory from the sharding rules, checked by hand."""

import json

import pytest

from moe_jax.cli import main
from moe_jax.models.config import ConfigError, base_model_config
from moe_jax.parallel.memory import memory_plan


def small_config(**overrides):
    m = base_model_config()
    m.update(vocab_size=16, d_model=8, num_layers=1, num_dense_layers=0, num_heads=2, q_lora_rank=0,
             kv_lora_rank=4, qk_nope_head_dim=2, qk_rope_head_dim=2, v_head_dim=2, num_experts=4,
             expert_ffn=4, num_shared_experts=1, top_k=1, mtp_depth=0, **overrides)
    return m


# Mesh fsdp=2, expert=2 (4 devices). Non-expert weights split "embed" (or an MLA rank)
# over fsdp*expert = 4; routed experts split E over expert = 2 and D over fsdp = 2.
# One scanned MoE layer, so those shapes carry a leading 1.
#   parameter            shape          full  split             per device
#   embed/embedding      [16, 8]         128  D/4                16*2     = 32
#   attn_norm, mlp_norm  [1, 8] x2        16  replicated         8+8      = 16
#   attn/q               [1, 8, 2, 4]     64  D/4                2*2*4    = 16
#   attn/kv_a            [1, 8, 6]        48  D/4                2*6      = 12
#   attn/kv_a_norm       [1, 4]            4  replicated                  =  4
#   attn/kv_b            [1, 4, 2, 4]     32  kv_lora/4          1*2*4    =  8
#   attn/o               [1, 2, 2, 8]     32  D/4                2*2*2    =  8
#   router/gate          [1, 8, 4]        32  D/4 (E not split)  2*4      =  8
#   wi_gate, wi_up       [1, 4, 8, 4] x2 256  E/2, D/2           2*4*4 x2 = 64
#   wo                   [1, 4, 4, 8]    128  E/2, D/2           2*4*4    = 32
#   shared gate, up      [1, 8, 4] x2     64  D/4                2*4 x2   = 16
#   shared down          [1, 4, 8]        32  D/4                4*2      =  8
#   final_norm           [8]               8  replicated                  =  8
#   head                 [8, 16]         128  D/4                2*16     = 32
#   total                                972                              264
# float32 params: params 264*4 = 1056 B, grads 1056 B, Adam moments 264*8 = 2112 B, no
# master copy -> 4224 B. bfloat16 params: 528 + 528 + 2112 + master 264*4 = 1056 -> 4224 B.
HAND = {"param_count": 972, "per_device_params": 264, "routed_experts": 96}


def test_small_config_matches_the_hand_count():
    plan = memory_plan(small_config(), {"fsdp": 2, "expert": 2})
    assert plan["devices"] == 4
    assert plan["param_count"] == HAND["param_count"]
    assert plan["per_device_params"] == HAND["per_device_params"]
    assert plan["groups"]["routed_experts"] == HAND["routed_experts"]
    assert plan["per_device"] == {"params": 1056, "grads": 1056, "adam_moments": 2112,
                                  "master_params": 0, "optimizer": 2112, "total": 4224}


def test_bfloat16_params_add_a_float32_master_copy():
    plan = memory_plan(small_config(param_dtype="bfloat16"), {"fsdp": 2, "expert": 2})
    assert plan["per_device"] == {"params": 528, "grads": 528, "adam_moments": 2112,
                                  "master_params": 1056, "optimizer": 3168, "total": 4224}


def test_deepseek_v3_on_256_devices(capsys):
    assert main(["plan", "--config", "configs/deepseek_v3.py", "--mesh",
                 "data=1,fsdp=32,expert=8,tensor=1", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["devices"] == 256
    # Routed experts: (58 MoE layers + 1 MTP layer) * 256 experts * 3 matrices * 7168 *
    # 2048, split over all 256 devices (E over expert=8, D over fsdp=32):
    # 59 * 3 * 7168 * 2048 = 2,598,371,328 per device.
    assert plan["groups"]["routed_experts"] == 59 * 3 * 7168 * 2048
    # Everything else is split over fsdp * expert too: within 1% of an even split.
    assert plan["per_device_params"] <= 1.01 * plan["param_count"] / 256
    b = plan["per_device"]
    assert b["total"] == b["params"] * 4 == plan["per_device_params"] * 16  # float32: 4+4+8 bytes
    assert main(["plan", "--config", "configs/deepseek_v3.py", "--mesh", "fsdp=-1,expert=8",
                 "--devices", "256"]) == 0
    assert "total" in capsys.readouterr().out


def test_mesh_that_does_not_fill_the_devices_names_the_field():
    with pytest.raises(ConfigError, match="mesh.fsdp"):
        memory_plan(small_config(), {"fsdp": -1, "expert": 3}, num_devices=4)


def qlora_plan(capsys, *extra):
    assert main(["plan", "--config", "configs/deepseek_v2_lite.py", "--qlora", "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def test_qlora_plan_of_deepseek_v2_lite_fits_in_16_gb_and_grows_with_rank(capsys):
    r16 = qlora_plan(capsys, "--lora-rank", "16")
    r64 = qlora_plan(capsys, "--lora-rank", "64")
    assert r16["batch_size"] == 1 and r16["seq_len"] == 2048
    assert r16["per_device"]["total"] < 16 * 10**9
    assert r64["per_device"]["total"] < 16 * 10**9
    # Only the adapter terms depend on the rank, linearly: A [in, r] + B [r, out].
    assert r64["adapter_params"] == 4 * r16["adapter_params"]
    grown = r64["per_device"]["total"] - r16["per_device"]["total"]
    # bfloat16 adapters + bfloat16 grads + two float32 moments = 12 bytes per parameter.
    assert grown == 12 * (r64["adapter_params"] - r16["adapter_params"])
    # NF4 base: 15.28B quantised weights at 0.5 B + a float32 absmax per 64 (0.0625 B), plus
    # 0.43B unquantised (embedding 102400 x 2048, head the same, norms, routers) in bfloat16.
    q = r16["quantised_params"]
    assert r16["per_device"]["base"] == pytest.approx(q * 0.5625 + (r16["base_params"] - q) * 2,
                                                      rel=1e-3)
    assert 15.6e9 < r16["base_params"] < 15.8e9


def test_qlora_plan_text_and_per_expert_adapters(capsys):
    assert main(["plan", "--config", "configs/deepseek_v2_lite.py", "--qlora"]) == 0
    out = capsys.readouterr().out
    assert "Adam moments" in out and "routed experts" in out
    experts = qlora_plan(capsys, "--lora-targets", "attention,routed_experts")
    # Per-expert adapters: for each of 26 MoE layers x 64 experts, gate and up
    # (2048 + 1408) * 16 and down (1408 + 2048) * 16 = 3 * 55,296 = 165,888 parameters.
    attention_only = qlora_plan(capsys, "--lora-targets", "attention")
    assert experts["adapter_params"] - attention_only["adapter_params"] == 26 * 64 * 165_888


def test_qlora_plan_needs_full_remat(capsys):
    with pytest.raises(ConfigError, match="model.remat_policy"):
        main(["plan", "--config", "configs/deepseek_v2_lite.py", "--qlora",
              "--override", "model.remat_policy=none"])
