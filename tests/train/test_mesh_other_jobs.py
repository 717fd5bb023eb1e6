"""GRPO, distillation and LoRA steps on 8 simulated devices (expert=4 x data=2): the first
iteration's losses equal one device's. (The GRM pipeline's 8-device run is in
tests/grm/test_pipeline_smoke.py; the main job's in test_mesh_jobs.py.)"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import MICRO_MODEL, MICRO_RUN, lm_batch, tiny_model_config
from moe_jax.config import load_config
from moe_jax.distill.schedule import temperature_schedule
from moe_jax.distill.step import make_distill_train_step
from moe_jax.jobs import fixed_budget as fb
from moe_jax.jobs import grpo as grpo_job
from moe_jax.lora.adapters import default_lora_config, init_adapters
from moe_jax.lora.step import create_lora_state, make_lora_train_step
from moe_jax.models.transformer import Transformer
from moe_jax.moe.router import BIAS_COLLECTION
from moe_jax.train import loop
from moe_jax.train.losses import LossWeights
from moe_jax.train.metrics import read_metrics
from moe_jax.train.optimizer import default_optimizer_config, make_optimizer
from moe_jax.train.placement import Placement

EP_DATA = {"data": 2, "fsdp": 1, "expert": 4, "tensor": 1}
ONE = {"data": 1, "fsdp": 1, "expert": 1, "tensor": 1}
quiet = dict(log=lambda *_: None)
SMALL = dict(num_layers=2, num_dense_layers=1, d_model=32, dense_ffn=64, q_lora_rank=0, kv_lora_rank=16,
             qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8, num_experts=4, top_k=2, n_group=1,
             topk_group=1, expert_ffn=16, mtp_depth=0, dispatch="dropless")


def placement(sizes):
    from moe_jax.parallel.mesh import make_mesh

    return Placement(make_mesh(sizes))


def batches(steps=2, rows=8, length=17):
    return iter([lm_batch(jax.random.randint(jax.random.PRNGKey(10 + i), (rows, length), 3, 99))
                 for i in range(steps)])


def first_losses(run):
    """{layout: first loss} of `run(placement)` on one device and on expert=4 x data=2."""
    return {name: run(placement(sizes)) for name, sizes in (("one", ONE), ("ep_data", EP_DATA))}


def assert_close(losses):
    one, ep = losses["one"], losses["ep_data"]
    assert np.isfinite(one) and abs(ep - one) <= 1e-4 * abs(one), losses


def optimizer():
    c = default_optimizer_config()
    c.learning_rate, c.warmup_steps, c.total_steps = 1e-2, 1, 100
    return make_optimizer(c)


def test_distillation_step_on_8_devices():
    m_teacher, m_student = tiny_model_config(**SMALL), tiny_model_config(**dict(SMALL, num_layers=1))
    teacher, student = Transformer.from_config(m_teacher), Transformer.from_config(m_student)
    host = nn.unbox(jax.jit(teacher.init)(jax.random.PRNGKey(1), jnp.zeros((1, 16), jnp.int32)))

    def run(p):
        opt = optimizer()
        params, bias = p.put_params(teacher, host["params"], host.get(BIAS_COLLECTION, {}))
        state, shardings = train_state(p, student, opt)
        step = make_distill_train_step(student, teacher, opt, temperature_schedule("constant", 2.0, 2.0, 2),
                                       0.5, LossWeights(), 0.0)
        logged = []
        fb.train_steps(p, step, state, shardings, batches(), 1, "distill", logged.append, batch_size=8,
                       constants=({"params": params, BIAS_COLLECTION: bias},))
        return float(logged[0].split("loss ")[1])

    assert_close(first_losses(run))


def train_state(p, model, opt, seq_len=16):
    from moe_jax.train.state import create_train_state

    return p.create_state(model, lambda rng: create_train_state(model, opt, rng, seq_len),
                          jax.random.PRNGKey(7), seq_len)


def test_lora_step_on_8_devices():
    m = tiny_model_config(**SMALL)
    model = Transformer.from_config(m)
    host = nn.unbox(jax.jit(model.init)(jax.random.PRNGKey(2), jnp.zeros((1, 16), jnp.int32)))
    c = default_lora_config()
    c.rank = 4

    def run(p):
        opt = optimizer()
        base = p.put(host["params"], p.param_shardings(model, host["params"]))
        state = create_lora_state(init_adapters(jax.random.PRNGKey(3), host["params"], c), opt,
                                  host.get(BIAS_COLLECTION, {}))
        shardings = jax.tree.map(lambda _: p.replicated(), state)
        logged = []
        fb.train_steps(p, make_lora_train_step(model, opt, c, LossWeights()), p.put(state, shardings),
                       shardings, batches(), 1, "lora", logged.append, batch_size=8, constants=(base,))
        return float(logged[0].split("loss ")[1])

    assert_close(first_losses(run))


MICRO = MICRO_MODEL + MICRO_RUN + [
    "eval.max_new_tokens=8",
]


@pytest.mark.slow
def test_grpo_on_8_devices(tmp_path):
    sft = load_config("experiments/sft_reasoning.py:tiny",
                      MICRO + ["train.steps=2", "train.batch_size=8", "train.checkpoint_every=2",
                               "mesh.fsdp=1", f"data.data_dir={tmp_path / 'data'}"])
    loop.train_and_evaluate(sft, str(tmp_path / "sft"), **quiet)
    first = {}
    for name, sizes in (("one", ONE), ("ep_data", EP_DATA)):
        config = load_config("experiments/grpo_reasoning.py:tiny",
                             MICRO + ["train.steps=1", "train.batch_size=4", "rl.group_size=4",
                                      "rl.max_new_tokens=8", "rl.num_minibatches=2",
                                      f"rl.init_from={tmp_path / 'sft'}", f"data.data_dir={tmp_path / 'data'}"]
                             + [f"mesh.{k}={v}" for k, v in sizes.items()])
        summary = grpo_job.run(config, str(tmp_path / name), **quiet)
        assert summary.details["mesh"] == sizes
        first[name] = read_metrics(str(tmp_path / name))[1]
    assert first["one"]["reward"] == first["ep_data"]["reward"]  # the same samples
    assert_close({k: v["loss"] for k, v in first.items()})
