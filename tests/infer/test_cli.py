"""`moe-jax sample` on a checkpoint laid out as the training loop writes it."""

import json

import numpy as np
import orbax.checkpoint as ocp

from moe_jax.cli import main
from moe_jax.data.tokenizer import CharTokenizer
from moe_jax.infer.generate import generate


def test_sample_prints_the_completion(tmp_path, capsys, tiny_model):
    state = {"step": np.int32(7), "params": tiny_model["params"], "opt_state": {},
             "router_bias": tiny_model["router_bias"]}
    with ocp.StandardCheckpointer() as checkpointer:  # leaving the block waits for the save
        checkpointer.save(str(tmp_path / "checkpoints" / "7" / "state"), state)

    args = ["sample", "--config", "configs/tiny.py", "--checkpoint", str(tmp_path),
            "--prompt", "12+34=", "--max-new-tokens", "6", "--json"]
    for override in tiny_model["overrides"]:
        args.append("--config." + override)  # the same override syntax as moe_jax.main
    assert main(args) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    tok = CharTokenizer()
    prompt = [tok.bos_id] + tok.encode("12+34=")
    out = generate(tiny_model["m"], tiny_model["params"], tiny_model["router_bias"], np.array([prompt]),
                   np.array([len(prompt)]), max_new_tokens=6, stop_tokens=(tok.eos_id,),
                   pad_id=tok.pad_id, vocab_limit=tok.vocab_size)
    n = int(out["lengths"][0])
    assert line["prompt"] == "12+34=" and line["tokens"] == n
    assert line["completion"] == tok.decode(np.asarray(out["tokens"][0, :n]).tolist())
    # --speculative (the tiny model has an MTP module): greedy, so the same completion,
    # with its drafts counted: the first token needs none, then each verify step proposes
    # one and emits one token, and a second when the draft is kept.
    assert main(args + ["--speculative"]) == 0
    spec = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert spec["completion"] == line["completion"] and spec["tokens"] == n
    proposed, accepted = spec["drafts_proposed"], spec["drafts_accepted"]
    assert 0 <= accepted <= proposed and 1 + proposed <= n <= 1 + proposed + accepted
