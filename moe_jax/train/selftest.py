"""Train the tiny model a few steps on a mesh and print the losses: a check that sharding,
expert parallelism and multi-host start-up give the one-device numbers.

One process, 8 simulated CPU devices:

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -u -m moe_jax.train.selftest --layout ep_data

Two processes with 4 devices each (run both; PORT free on 127.0.0.1):

    XLA_FLAGS=--xla_force_host_platform_device_count=4 python -u -m moe_jax.train.selftest \\
        --layout ep_data --coordinator 127.0.0.1:PORT --num-processes 2 --process-id 0   # and 1

`--layout none` trains on one device without a mesh: the yardstick; `--layout
none,ep,ep_data,ep_fsdp --init host` runs them all from one initial state. Each process
prints one JSON line per layout: {"layout", "losses", "dropped", "mesh", "process_id", ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

LAYOUTS = {
    "none": None,
    "ep": {"data": 1, "fsdp": 1, "expert": 8, "tensor": 1},
    "ep_data": {"data": 2, "fsdp": 1, "expert": 4, "tensor": 1},
    "ep_fsdp": {"data": 1, "fsdp": 2, "expert": 4, "tensor": 1},
}


def synthetic_batch(step: int, batch: int, length: int, vocab: int, seed: int = 0):
    """Next-token batch of random tokens, the same on every process."""
    del step  # one repeated batch: the loss must fall, a sharper check than noise
    import numpy as np

    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab, (batch, length + 1)).astype(np.int32)
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
            "loss_mask": np.ones((batch, length), np.float32),
            "segment_ids": np.ones((batch, length), np.int32),
            "positions": np.broadcast_to(np.arange(length, dtype=np.int32), (batch, length)).copy()}


def build(dispatch: str = "capacity", config_path: str | None = None):
    """-> (model config, model, optimizer) of the self-test: configs/tiny.py with a
    capacity factor of E / K, which gives every expert room for every token on its
    device (or in the batch), so nothing is dropped and every layout computes the same
    numbers as one device."""
    import jax

    from moe_jax.config import load_config
    from moe_jax.models.transformer import Transformer
    from moe_jax.train.optimizer import default_optimizer_config, make_optimizer

    jax.config.update("jax_default_matmul_precision", "highest")
    if config_path is None:
        config_path = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "tiny.py")
    m = load_config(config_path).model
    m.dispatch = dispatch
    m.capacity_factor = float(m.num_experts) / m.top_k
    opt_config = default_optimizer_config()
    opt_config.warmup_steps, opt_config.total_steps, opt_config.learning_rate = 1, 10, 1e-2
    return m, Transformer.from_config(m), make_optimizer(opt_config)


def initial_host_state(length: int = 16, dispatch: str = "capacity"):
    """The self-test's initial TrainState as host (numpy) arrays."""
    import jax

    from moe_jax.train.state import create_train_state

    _, model, optimizer = build(dispatch)
    state = jax.jit(lambda r: create_train_state(model, optimizer, r, length))(jax.random.PRNGKey(0))
    return jax.device_get(state)


def train_losses(mesh_sizes=None, steps: int = 3, batch: int = 8, length: int = 16,
                 dispatch: str = "capacity", initial_state=None) -> dict:
    """Train the self-test model for `steps` steps on `mesh_sizes` (None: one device, no
    mesh) on one repeated batch -> {"losses", "dropped", "mesh", process facts}.

    initial_state: a host copy of the TrainState (`initial_host_state`) to start from,
    which skips compiling the initialiser; by default it is created, sharded, on the mesh.
    """
    import jax
    from jax.sharding import NamedSharding, PartitionSpec as P

    from moe_jax.parallel import sharding
    from moe_jax.parallel.mesh import make_mesh
    from moe_jax.train.state import create_train_state
    from moe_jax.train.step import make_train_step
    from moe_jax.train.losses import LossWeights

    m, model, optimizer = build(dispatch)
    rng = jax.random.PRNGKey(0)
    train_step = make_train_step(model, optimizer, LossWeights.from_config(m), m.bias_update_rate)

    if mesh_sizes is None:
        state = (jax.device_put(initial_state) if initial_state is not None else
                 jax.jit(lambda r: create_train_state(model, optimizer, r, length))(rng))
        step_fn = jax.jit(train_step, donate_argnums=0)
        place = lambda b: b  # noqa: E731
        mesh_shape = {}
    else:
        mesh = make_mesh(mesh_sizes)
        init = lambda r: create_train_state(model, optimizer, r, length)  # noqa: E731
        if initial_state is None:
            state, state_shardings = sharding.create_sharded_state(model, init, rng, mesh)
        else:
            _, state_shardings = sharding.state_shardings(model, init, mesh)
            state = sharding.put_global(initial_state, state_shardings)
        batch_shardings = sharding.batch_shardings(synthetic_batch(0, batch, length, m.vocab_size), mesh)
        replicated = NamedSharding(mesh, P())
        step_fn = sharding.jit_sharded(train_step, mesh, (state_shardings, batch_shardings, replicated),
                                       (state_shardings, replicated), donate_argnums=0)
        place = lambda b: sharding.shard_batch(b, mesh)  # noqa: E731
        mesh_shape = dict(mesh.shape)

    losses, dropped = [], []
    for i in range(steps):
        state, metrics = step_fn(state, place(synthetic_batch(i, batch, length, m.vocab_size)),
                                 jax.random.PRNGKey(i))
        losses.append(float(metrics["loss"]))
        dropped.append(float(metrics["dropped_fraction"]))
    return {"losses": losses, "dropped": dropped, "mesh": mesh_shape,
            "process_id": jax.process_index(), "process_count": jax.process_count(),
            "device_count": jax.device_count(), "local_device_count": jax.local_device_count()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layout", default="ep_data",
                        help=f"one of {sorted(LAYOUTS)}, or several separated by commas")
    parser.add_argument("--init", choices=("sharded", "host"), default="sharded",
                        help="sharded: create the state on each mesh (create_sharded_state); "
                             "host: initialise once on one device and copy it onto every layout")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=16)
    parser.add_argument("--dispatch", default="capacity")
    parser.add_argument("--coordinator", default=None, help="host:port (or JAX_COORDINATOR_ADDRESS)")
    parser.add_argument("--num-processes", type=int, default=None)
    parser.add_argument("--process-id", type=int, default=None)
    parser.add_argument("--init-timeout", type=int, default=60, help="seconds to wait for peers")
    parser.add_argument("--heartbeat-timeout", type=int, default=20, help="seconds before a silent peer is dead")
    args = parser.parse_args(argv)

    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from moe_jax.parallel.distributed import initialize_distributed, shutdown_distributed

    initialize_distributed(args.coordinator, args.num_processes, args.process_id,
                           initialization_timeout=args.init_timeout,
                           heartbeat_timeout_seconds=args.heartbeat_timeout)
    layouts = args.layout.split(",")
    unknown = [name for name in layouts if name not in LAYOUTS]
    if unknown:
        parser.error(f"--layout {unknown[0]!r}: expected one of {sorted(LAYOUTS)}")
    initial = initial_host_state(args.length, args.dispatch) if args.init == "host" else None
    for layout in layouts:
        result = train_losses(LAYOUTS[layout], args.steps, args.batch, args.length, args.dispatch,
                              initial_state=initial)
        result["layout"] = layout
        print(json.dumps(result), flush=True)
    shutdown_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
