"""`moe-jax demo`, a one-minute demonstration: train the tiny MoE on CPU and count DeepSeek-V3.

The task is deterministic sequence reversal on random digit strings, which a model can
only learn by attending across the sequence, so a falling loss means attention, routing
and the experts all learn together.
"""

from __future__ import annotations

import time



def reversal_batch(rng, batch: int, half: int, vocab: int):
    """Rows `a1..an SEP an..a1`: the loss counts only the reversed half (rng: a numpy Generator)."""
    import numpy as np

    digits = rng.integers(3, vocab, size=(batch, half))
    sep = np.full((batch, 1), 2)
    row = np.concatenate([digits, sep, digits[:, ::-1]], axis=1).astype(np.int32)
    inputs, targets = row[:, :-1], row[:, 1:]
    mask = np.zeros_like(targets, np.float32)
    mask[:, half:] = 1.0
    length = inputs.shape[1]
    return {"inputs": inputs, "targets": targets, "loss_mask": mask,
            "segment_ids": np.ones_like(inputs), "positions": np.broadcast_to(np.arange(length), inputs.shape).astype(np.int32)}


def run_demo(config_path: str = "tiny", seconds: float = 60.0, batch: int = 16,
             half: int = 12, vocab: int = 16, seed: int = 0) -> dict:
    # Imported here: `moe-jax --help` and the other subcommands need none of this.
    import jax
    import numpy as np

    from moe_jax.config import load_config
    from moe_jax.models.param_count import count_parameters, format_count
    from moe_jax.models.transformer import Transformer
    from moe_jax.train.losses import LossWeights
    from moe_jax.train.optimizer import default_optimizer_config, make_optimizer
    from moe_jax.train.state import create_train_state
    from moe_jax.train.step import make_train_step

    config = load_config(config_path)
    model = Transformer.from_config(config.model)
    opt_config = default_optimizer_config()
    opt_config.total_steps, opt_config.warmup_steps, opt_config.learning_rate = 600, 30, 2e-3
    optimizer = make_optimizer(opt_config)
    state = create_train_state(model, optimizer, jax.random.PRNGKey(seed), 2 * half)
    step_fn = jax.jit(make_train_step(model, optimizer, LossWeights.from_config(config.model),
                                      config.model.bias_update_rate), donate_argnums=0)
    rng = np.random.default_rng(seed)
    counts = count_parameters(config.model)
    print(f"tiny model: {format_count(counts['total'])} parameters, "
          f"{format_count(counts['activated'])} activated per token; task: reverse {half} digits")
    start, step, first, last = time.time(), 0, None, None
    while time.time() - start < seconds and step < opt_config.total_steps:
        state, metrics = step_fn(state, reversal_batch(rng, batch, half, vocab), jax.random.PRNGKey(step))
        step += 1
        if step == 1 or step % 25 == 0:
            ce = float(metrics["ce_loss"])
            first = ce if first is None else first
            last = ce
            print(f"step {step:4d}  loss {ce:.3f}  max/mean expert load "
                  f"{float(metrics['max_load_ratio']):.2f}  ({time.time() - start:.0f}s)", flush=True)
    v3 = count_parameters(load_config("deepseek_v3").model)
    print(f"loss fell from {first:.3f} to {last:.3f} in {step} steps "
          f"({time.time() - start:.0f}s on {jax.default_backend()})")
    print(f"DeepSeek-V3 preset: {format_count(v3['total'])} total, {format_count(v3['activated'])} "
          f"activated per token (+{format_count(v3['mtp_total'])} in the MTP module)")
    return {"first_loss": first, "last_loss": last, "steps": step}


def _demo(args) -> int:
    result = run_demo(seconds=args.seconds)
    return 0 if result["last_loss"] < result["first_loss"] else 1


def add_demo_command(subparsers) -> None:
    d = subparsers.add_parser("demo", help="train the tiny model on CPU for about a minute")
    d.add_argument("--seconds", type=float, default=60.0)
    d.set_defaults(func=_demo)
