"""Small builders shared by tests."""

import os
import sys

import jax.numpy as jnp
import numpy as np

from moe_jax.config import load_config


def tiny_model_config(**overrides):
    config = load_config("configs/tiny.py")
    m = config.model
    for key, value in overrides.items():
        m[key] = value
    return m


def lm_batch(tokens):
    """Next-token batch from int tokens [B, T+1], every target counted."""
    tokens = np.asarray(tokens, np.int32)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    b, t = inputs.shape
    return {"inputs": jnp.asarray(inputs), "targets": jnp.asarray(targets),
            "loss_mask": jnp.ones((b, t), jnp.float32), "segment_ids": jnp.ones((b, t), jnp.int32),
            "positions": jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))}


def random_experts(keys, num_experts, d_model, ffn, scale=0.3):
    """ExpertWeights with N(0, scale^2) entries from three keys (gate, up, down)."""
    import jax

    from moe_jax.moe.dispatch import ExpertWeights

    return ExpertWeights(jax.random.normal(keys[0], (num_experts, d_model, ffn)) * scale,
                         jax.random.normal(keys[1], (num_experts, d_model, ffn)) * scale,
                         jax.random.normal(keys[2], (num_experts, ffn, d_model)) * scale)


def save_untrained_grm(directory, max_new_tokens=8):
    """A micro GRM (random weights) saved as the GRM pipeline saves one, for tests of the
    plumbing that reads it (rl.reward=grm)."""
    import json
    import os

    from moe_jax.grm.finetune import init_params
    from moe_jax.grm.reward import GRM_SPEC_FILE
    from moe_jax.interop.checkpoint import save_converted

    grm = load_config("experiments/grm_spct.py:tiny").model
    grm.d_model, grm.num_layers, grm.num_experts, grm.dense_ffn, grm.expert_ffn = 32, 2, 2, 32, 32
    grm.kv_lora_rank, grm.qk_nope_head_dim, grm.v_head_dim, grm.qk_rope_head_dim = 16, 8, 8, 8
    params, router_bias = init_params(grm, 0, 16)
    save_converted(str(directory), params, router_bias, grm)
    with open(os.path.join(directory, GRM_SPEC_FILE), "w") as f:
        json.dump({"max_new_tokens": max_new_tokens}, f)


def tiny_char_model(seed=0):
    """A micro model (random weights) whose vocabulary is exactly the char tokenizer's,
    so every id it can draw decodes: -> (model config, params, router_bias)."""
    import jax
    from flax import linen as nn

    from moe_jax.data.tokenizer import CharTokenizer
    from moe_jax.models.transformer import Transformer

    m = load_config("configs/tiny.py").model
    m.update(d_model=32, num_layers=2, dense_ffn=64, num_heads=2, q_lora_rank=16, kv_lora_rank=16,
             qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8, num_experts=4, expert_ffn=16,
             top_k=2, n_group=1, topk_group=1, mtp_depth=0, dispatch="dropless",
             vocab_size=CharTokenizer().vocab_size)
    variables = nn.unbox(jax.jit(Transformer.from_config(m).init)(jax.random.PRNGKey(seed),
                                                                  jnp.zeros((1, 4), jnp.int32)))
    return m, variables["params"], variables.get("router_bias", {})


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_PACKAGE_ONLY = None


def outside_env(**extra):
    """The environment of a process started in another directory, as after an install:
    this checkout's `moe_jax` importable and nothing else of the repository (not its
    experiments/, configs/ or tests/), so a reference to a path relative to the
    repository fails there as it would for a user."""
    global _PACKAGE_ONLY
    if _PACKAGE_ONLY is None:
        import tempfile

        _PACKAGE_ONLY = tempfile.mkdtemp(prefix="moe_jax_package_only_")
        os.symlink(os.path.join(REPO, "moe_jax"), os.path.join(_PACKAGE_ONLY, "moe_jax"))
    env = dict(os.environ, PYTHONPATH=_PACKAGE_ONLY, **extra)
    env.pop("PYTEST_CURRENT_TEST", None)
    return env


# A micro arithmetic run (experiments/pretrain_arith.py and the experiments built on it):
# a 2-layer, 32-wide model on 400 problems, quick to compile and to train a few steps.
MICRO_MODEL = ["model.d_model=32", "model.num_layers=2", "model.dense_ffn=64", "model.num_heads=2",
               "model.kv_lora_rank=16", "model.qk_nope_head_dim=8", "model.qk_rope_head_dim=8",
               "model.v_head_dim=8", "model.expert_ffn=16"]
MICRO_RUN = ["data.seq_len=64", "data.num_train=400", "data.num_test=40", "eval.final_num_examples=8",
             "eval.batch_size=8", "eval.every=0", "eval.show=0", "train.progress_bar=False"]

# The README's main job (experiments/pretrain_arith.py:tiny) at micro sizes, one device.
MAIN_JOB_MICRO = MICRO_MODEL + MICRO_RUN + [
    "train.batch_size=4", "eval.max_new_tokens=4", "train.log_every=1",
    "train.checkpoint_every=3", "train.steps=12", "mesh.fsdp=1",
]


def main_command(workdir, data_dir, extra=()):
    """The README's main job at micro sizes, as a user runs it from another directory
    (run it with cwd outside the repository, env=outside_env())."""
    flags = [f"--config.{o}" for o in MAIN_JOB_MICRO + [f"data.data_dir={data_dir}", *extra]]
    return [sys.executable, "-u", "-m", "moe_jax.main",
            f"--config={REPO}/experiments/pretrain_arith.py:tiny", f"--workdir={workdir}", *flags]


def rewind(workdir, step):
    """Remove a finished run's checkpoints after `step` (with their checksums) and its
    metrics, so a rerun of the same config resumes from `step`: a run stopped there, with
    the programs of the full run (one compile, shared through the compilation cache)."""
    import shutil

    checkpoints = os.path.join(workdir, "checkpoints")
    for name in os.listdir(checkpoints):
        if name.isdigit() and int(name) > step:
            shutil.rmtree(os.path.join(checkpoints, name))
            os.remove(os.path.join(checkpoints, "checksums", f"{name}.json"))
    os.remove(os.path.join(workdir, "metrics.jsonl"))
