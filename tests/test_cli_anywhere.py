"""Every `moe-jax` subcommand, run as an installed command from a directory outside the
repository (nothing of the repository on the path but the package), on a micro model."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

import jax
import jax.numpy as jnp
import pytest
from flax import linen as nn

from helpers import REPO, outside_env
from moe_jax.config import load_config
from moe_jax.interop.checkpoint import save_converted
from moe_jax.models.transformer import Transformer

MICRO = dict(d_model=32, num_layers=2, dense_ffn=64, num_heads=2, q_lora_rank=0, kv_lora_rank=16,
             qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8, num_experts=4, expert_ffn=16,
             top_k=2, n_group=1, topk_group=1, mtp_depth=0, max_seq_len=64)


def moe_jax_command():
    """The console script when installed beside this interpreter, else the same entry point."""
    script = os.path.join(os.path.dirname(sys.executable), "moe-jax")
    return [script] if os.path.exists(script) else [sys.executable, "-m", "moe_jax.cli"]


def run(args, cwd, timeout=600, ok=(0,)):
    out = subprocess.run(moe_jax_command() + args, cwd=cwd, env=outside_env(), capture_output=True,
                         text=True, timeout=timeout)
    assert out.returncode in ok, (args, out.returncode, out.stderr[-3000:])
    return out.stdout


@pytest.fixture(scope="module")
def outside(tmp_path_factory):
    """A directory outside the repository holding a micro model directory."""
    where = tmp_path_factory.mktemp("elsewhere")
    m = load_config("tiny").model
    m.update(MICRO)
    variables = nn.unbox(jax.jit(Transformer.from_config(m).init)(jax.random.PRNGKey(0),
                                                                  jnp.zeros((1, 4), jnp.int32)))
    save_converted(str(where / "model"), variables["params"], variables["router_bias"], m)
    return where


def test_params_and_plan_take_preset_names(outside):
    counts = json.loads(run(["params", "--config", "deepseek_v3", "--json"], outside))
    assert round(counts["total"] / 1e9) == 671
    moe = json.loads(run(["params", "--config", "tiny", "--config.model.num_experts=32", "--json"], outside))
    assert moe["total"] > json.loads(run(["params", "--config", "tiny", "--json"], outside))["total"]
    plan = json.loads(run(["plan", "--config", "deepseek_v3", "--mesh", "fsdp=32,expert=8", "--json"],
                          outside))
    assert plan["devices"] == 256


@pytest.mark.slow  # ~25 s: the demo compiles and trains the tiny model
def test_demo(outside):
    # Three seconds may end before the loss has been logged twice: exit status 1 then says
    # "the loss did not fall", which is the demo's verdict, not a failure to start.
    out = run(["demo", "--seconds", "3"], outside, ok=(0, 1))
    assert "loss fell from" in out and "DeepSeek-V3 preset: 671.03B total" in out


def test_convert_sample_quantize_and_export_a_model_directory(outside):
    model = str(outside / "model")
    hf = json.loads(run(["convert", "--from-ckpt", model, "--to-hf", "hf", "--quiet", "--overwrite"],
                        outside).splitlines()[-1])
    assert os.path.exists(outside / "hf" / "config.json") and hf["to_hf"] == "hf"
    line = json.loads(run(["sample", "--checkpoint", model, "--prompt", "12+34=", "--max-new-tokens", "3",
                           "--json"], outside).splitlines()[-1])
    assert line["prompt"] == "12+34=" and line["tokens"] <= 3
    run(["quantize", "--config", "tiny", "--checkpoint", model, "--out", "q", "--bits", "8", "--json"]
        + [f"--config.model.{k}={v}" for k, v in MICRO.items()], outside)
    assert os.path.exists(outside / "q" / "int8" / "quantization.json")
    run(["export", "--checkpoint", model, "--out", "art"], outside)
    assert os.path.exists(outside / "art" / "manifest.json")
    shutil.rmtree(outside / "art")



def test_heldout_loss_and_slips_read_a_model_directory(outside):
    # The micro model directory records no run config: --config names the experiment, its
    # data generated small into outside/data (rows of 64 tokens, what the model reads).
    data = ["--config.data.num_train=32", "--config.data.num_test=16", "--config.data.data_dir=data",
            "--config.data.seq_len=64"]
    loss = json.loads(run(["heldout-loss", "--workdir", "model", "--batches", "1", "--batch-size", "4",
                           "--config", f"{REPO}/experiments/pretrain_arith.py:tiny"] + data,
                           outside).splitlines()[-1])
    # An untrained model's near-uniform logits over the 128-entry table: CE near ln 128 = 4.85.
    assert loss["step"] is None and loss["batches"] == 1 and abs(loss["heldout_ce"] - 4.85) < 0.5
    counts = json.loads(run(["slips", "model", "--examples", "4", "--json", "--config.eval.batch_size=4",
                             "--config.eval.max_new_tokens=4",
                             "--config", f"{REPO}/experiments/sft_reasoning.py:slip"] + data,
                             outside).splitlines()[-1])
    assert counts["problems"] == 4 and counts["right"] + counts["slip"] + counts["other"] == 4
    out = subprocess.run(moe_jax_command() + ["slips", "model"], cwd=outside, env=outside_env(),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "records no config.json" in out.stderr

def test_serve_answers_health(outside):
    proc = subprocess.Popen(moe_jax_command() + ["serve", "--checkpoint", "model", "--port", "0",
                                                 "--max-batch", "2"],
                            cwd=outside, env=outside_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline, url = time.time() + 300, None
        while url is None and time.time() < deadline:
            line = proc.stdout.readline()
            assert line or proc.poll() is None, "the server exited before it listened"
            if " on http://" in line:
                url = line.split(" on ")[1].split()[0]
        assert url, "no address printed"
        for _ in range(100):
            try:
                with urllib.request.urlopen(url + "/health", timeout=5) as response:
                    assert response.status == 200
                    break
            except OSError:
                time.sleep(0.5)
        else:
            raise AssertionError("/health never answered")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
