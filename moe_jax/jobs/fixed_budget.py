"""Short training runs of a fixed number of steps, shared by the distill and lora jobs.

Each compares models trained on the same batches for the same steps (a student from
scratch vs distilled, full fine-tuning vs LoRA), so the runs here keep no checkpoints
and resume nothing: a comparison is rerun whole. Weights worth keeping (a pretrained
base, a trained teacher) are saved as model directories and read with the one loader.
"""

from __future__ import annotations

import os
import time

import jax

from moe_jax.data.pipeline import train_dataset
from moe_jax.data.tfds_builders import load_task_split
from moe_jax.interop.checkpoint import MODEL_CONFIG_FILE, save_converted
from moe_jax.train.evaluate import exact_match
from moe_jax.models.transformer import Transformer
from moe_jax.train.loader import load_model
from moe_jax.train.losses import LossWeights
from moe_jax.train.optimizer import make_optimizer
from moe_jax.train.state import create_train_state
from moe_jax.train.step import make_train_step


def task_splits(config, difficulty, workdir: str):
    """(train, test) sources of config.data's task at `difficulty` (generated once)."""
    d = config.data
    data_dir = d.data_dir or os.path.join(workdir, "data")
    args = dict(num_train=d.num_train, num_test=d.num_test, seed=d.seed, **difficulty)
    return (load_task_split(d.task, "train", data_dir, **args),
            load_task_split(d.task, "test", data_dir, **args))


def batches(config, source, tokenizer, seed: int):
    """An endless iterator of packed training batches of config.train.batch_size."""
    return iter(train_dataset(source, tokenizer, global_batch_size=config.train.batch_size,
                              seq_len=config.data.seq_len, seed=seed, packing=config.data.packing))


def optimizer(config, learning_rate: float, steps: int, warmup: int, weight_decay: float):
    """config.optimizer with this run's rate, schedule length, warmup and decay."""
    o = config.optimizer.copy_and_resolve_references()
    o.learning_rate, o.total_steps, o.warmup_steps, o.weight_decay = learning_rate, steps, warmup, weight_decay
    return make_optimizer(o)


def train_steps(step, state, data, steps: int, name: str, log):
    """`steps` calls of step(state, batch, rng) -> (state, metrics); logs the loss four
    times. -> (state, last logged loss, seconds)."""
    start, loss = time.time(), float("nan")
    for i in range(steps):
        state, metrics = step(state, next(data), jax.random.PRNGKey(i))
        if (i + 1) % max(steps // 4, 1) == 0:
            loss = float(metrics["loss"])
            log(f"  {name} step {i + 1}/{steps}: loss {loss:.4f}")
    return state, loss, time.time() - start


def accuracy(config, model_config, params, router_bias, source, tokenizer):
    """(held-out exact match, number of problems) with config.eval's settings."""
    acc, count, _ = exact_match(model_config, params, router_bias, source, tokenizer,
                                task=config.data.task, num_examples=config.eval.num_examples,
                                batch_size=config.eval.batch_size,
                                max_new_tokens=config.eval.max_new_tokens)
    return acc, count


def start_model(config, workdir: str, *, read_from: str, field: str, name: str, steps: int,
                train_source, tokenizer, log):
    """(params, router_bias, seconds spent training) of config.model to start from:
    `read_from` (a training workdir or model directory; `field` names it in errors), else
    <workdir>/<name> saved by an earlier run, else trained here for `steps` steps on
    `train_source` and saved there as a model directory."""
    if read_from:
        try:
            loaded = load_model(read_from, config.model, log=log)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"{field} = {read_from!r}: {e}") from e
        log(f"{name} read from {read_from} (step {loaded.step})")
        return loaded.params, loaded.router_bias, 0.0
    directory = os.path.join(workdir, name)
    if os.path.exists(os.path.join(directory, MODEL_CONFIG_FILE)):
        saved = load_model(directory, log=log)
        return saved.params, saved.router_bias, 0.0
    m = config.model
    model = Transformer.from_config(m)
    opt = optimizer(config, config.optimizer.learning_rate, steps, config.optimizer.warmup_steps,
                    config.optimizer.weight_decay)
    state = create_train_state(model, opt, jax.random.PRNGKey(config.train.seed), config.data.seq_len)
    step = jax.jit(make_train_step(model, opt, LossWeights.from_config(m), m.bias_update_rate),
                   donate_argnums=0)
    state, _, seconds = train_steps(step, state, batches(config, train_source, tokenizer, 0), steps,
                                    name, log)
    params, router_bias = jax.device_get(state.params), jax.device_get(state.router_bias)
    save_converted(directory, params, router_bias, m, overwrite=True)
    return params, router_bias, seconds
