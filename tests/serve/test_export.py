"""`moe-jax export`: the artefact's loader, run where moe_jax cannot be imported, gives
the in-process sampler's greedy tokens, for float and int8 weights."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from moe_jax.cli import main
from moe_jax.data.tokenizer import CharTokenizer
from moe_jax.infer.generate import generate
from moe_jax.layers.int_quant import dequantize_tree
from moe_jax.quant.weights import quantize_tree
from moe_jax.train.loader import load_model

PROMPTS = ("12+34=", "505-17=", "7=")
NEW_TOKENS = 24

# Runs ART/generate.py with every import of moe_jax refused (an editable install would
# otherwise find it from any directory) and the repository off sys.path.
ISOLATED = """
import runpy, sys
class NoMoeJax:
    def find_spec(self, name, path=None, target=None):
        if name == "moe_jax" or name.startswith("moe_jax."):
            raise ImportError("moe_jax is not importable here")
sys.meta_path.insert(0, NoMoeJax())
repo = sys.argv[1]  # the repository, but not a virtualenv that lives inside it (CI's .venv)
sys.path = [p for p in sys.path if p and not (p == repo or (p.startswith(repo + "/")
                                                           and not p.startswith(sys.prefix)))]
try:
    import moe_jax
    sys.exit("moe_jax was importable")
except ImportError:
    print("moe_jax: not importable", flush=True)
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run_isolated(art, tmp_path, *args):
    repo = os.getcwd()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["JAX_PLATFORMS"] = "cpu"
    done = subprocess.run([sys.executable, "-c", ISOLATED, repo, os.path.join(art, "generate.py"),
                           art, *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    first, *rows = done.stdout.splitlines()
    assert first == "moe_jax: not importable"
    return [json.loads(r) for r in rows]


@pytest.mark.parametrize("quantized, fixed", [(False, False), (True, False), (False, True)],
                         ids=["float", "int8", "float-fixed-batch"])
def test_exported_artefact_generates_the_samplers_tokens(checkpoint, tmp_path, quantized, fixed):
    art = str(tmp_path / "art")
    args = ["export", "--checkpoint", checkpoint, "--out", art, "--context", "48"]
    args += ["--quantized"] * quantized + ["--batch", "4", "--prompt-len", "10"] * fixed
    assert main(args) == 0
    manifest = json.load(open(os.path.join(art, "manifest.json")))
    int8 = [w for w in manifest["weights"] if w["dtype"] == "int8"]
    assert bool(int8) == quantized  # int8 values travel as int8, with their scales
    assert manifest["batch"] == (4 if fixed else None)

    # The in-process sampler on the same weights (int8: as `moe-jax quantize --bits 8`
    # writes them and the loader reads them back), as `moe-jax sample` batches prompts.
    loaded = load_model(checkpoint, log=lambda *_: None)
    params = dequantize_tree(quantize_tree(loaded.params, 8, 128)) if quantized else loaded.params
    tok = CharTokenizer()
    encoded = [[tok.bos_id] + tok.encode(p) for p in PROMPTS]
    width = max(map(len, encoded))
    batch = np.array([[tok.pad_id] * (width - len(e)) + e for e in encoded])
    out = generate(loaded.model_config, params, loaded.router_bias, batch,
                   np.array([len(e) for e in encoded]), max_new_tokens=NEW_TOKENS,
                   stop_tokens=(tok.eos_id,), pad_id=tok.pad_id)
    expected = [np.asarray(out["tokens"][i, :n]).tolist() for i, n in enumerate(out["lengths"])]

    rows = run_isolated(art, str(tmp_path), *PROMPTS, "--max-new-tokens", str(NEW_TOKENS))
    assert [r["tokens"] for r in rows] == expected
    assert [r["text"] for r in rows] == [tok.decode(e) for e in expected]
    assert any(len(e) == NEW_TOKENS for e in expected)  # not all cut short by <eos>
