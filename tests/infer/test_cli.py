"""`moe-jax sample` on a checkpoint laid out as the training loop writes it."""

import json
import os

import numpy as np
import orbax.checkpoint as ocp

from moe_jax.cli import main
from moe_jax.data.tokenizer import CharTokenizer
from moe_jax.infer.cli import load_params, resolve_state_dir
from moe_jax.infer.generate import generate


def test_resolve_state_dir_picks_the_newest_step(tmp_path):
    for step in ("5", "20", "100"):
        os.makedirs(tmp_path / "checkpoints" / step / "state")
    os.makedirs(tmp_path / "checkpoints" / "checksums")
    newest = str(tmp_path / "checkpoints" / "100" / "state")
    assert resolve_state_dir(str(tmp_path)) == newest
    assert resolve_state_dir(str(tmp_path / "checkpoints")) == newest
    assert resolve_state_dir(str(tmp_path / "checkpoints" / "20")).endswith("20/state")


def test_sample_prints_the_completion(tmp_path, capsys, tiny_model):
    state = {"step": np.int32(7), "params": tiny_model["params"], "opt_state": {},
             "router_bias": tiny_model["router_bias"]}
    with ocp.StandardCheckpointer() as checkpointer:  # leaving the block waits for the save
        checkpointer.save(str(tmp_path / "checkpoints" / "7" / "state"), state)

    args = ["sample", "--config", "configs/tiny.py", "--checkpoint", str(tmp_path),
            "--prompt", "12+34=", "--max-new-tokens", "6", "--json"]
    for override in tiny_model["overrides"]:
        args += ["--override", override]
    assert main(args) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    tok = CharTokenizer()
    prompt = [tok.bos_id] + tok.encode("12+34=")
    params, router_bias = load_params(resolve_state_dir(str(tmp_path)))
    out = generate(tiny_model["m"], params, router_bias, np.array([prompt]),
                   np.array([len(prompt)]), max_new_tokens=6, stop_tokens=(tok.eos_id,),
                   pad_id=tok.pad_id)
    n = int(out["lengths"][0])
    assert line["prompt"] == "12+34=" and line["tokens"] == n
    assert line["completion"] == tok.decode(np.asarray(out["tokens"][0, :n]).tolist())
