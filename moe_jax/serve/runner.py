"""Serving a model under uvicorn, in the foreground (`moe-jax serve`) or on a
background thread (tests, notebooks, benchmarks).

    loaded = moe_jax.train.loader.load_model(checkpoint)
    served = serve_model(loaded.model_config, loaded.params, loaded.router_bias,
                         get_tokenizer("char"), num_slots=8, model_name="arith")
    with ServerThread(served.app) as url:                           # http://127.0.0.1:<port>
        ...
    served.engine.stop()

On a mesh, pass `placement=Placement.from_config(config)` (moe_jax.train.placement): the
weights are placed by the logical rules (routed experts over `expert`, the rest as
training places them) and the engine's slots and steps run on it, as sampling does in
evaluation and GRPO rollouts.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import NamedTuple

import uvicorn


class Served(NamedTuple):
    app: object
    engine: object
    model_name: str
    tokenizer: object


def serve_model(model_config, params, router_bias, tokenizer, *, num_slots: int = 8,
                context: int | None = None, model_name: str = "model", watermark=None,
                placement=None, log=print) -> Served:
    """An engine over the model, warmed up (the decode step and the smallest prompt
    bucket compiled) and started, and the app over it. watermark: a
    moe_jax.infer.watermark.Watermark every completion is drawn with (None: none).
    placement: a moe_jax.train.placement.Placement to serve on (host weights are placed
    on its mesh; num_slots must be a multiple of its batch shards), logged with `log`;
    None: one device."""
    from moe_jax.infer.engine import Engine
    from moe_jax.serve.app import create_app

    if placement is not None:
        from moe_jax.models.transformer import Transformer

        placement.check_model(model_config)
        params, router_bias = placement.put_params(Transformer.from_config(model_config), params,
                                                   router_bias or {})
        log(placement.describe_params(params))
    engine = Engine(model_config, params, router_bias, tokenizer, num_slots=num_slots,
                    context=context, watermark=watermark, placement=placement)
    engine.warmup()
    engine.start()
    return Served(create_app(engine, tokenizer, model_name), engine, model_name, tokenizer)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket; port 0 picks a free one (read it with getsockname)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


def uvicorn_server(app, log_level: str = "warning") -> uvicorn.Server:
    # One worker: the engine (and its device memory) lives in this process.
    return uvicorn.Server(uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=2))


class ServerThread:
    """uvicorn on a daemon thread, on 127.0.0.1 and a free port unless told otherwise."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        self.sock = bind(host, port)
        self.url = f"http://{host}:{self.sock.getsockname()[1]}"
        self.server = uvicorn_server(app, log_level)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       name="moe-jax-http", daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the HTTP server did not start")
            time.sleep(0.01)
        return self.url

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()
