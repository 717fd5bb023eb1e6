"""`moe-jax serve`: an OpenAI-compatible completions server for a checkpoint.

    moe-jax serve --checkpoint WORKDIR --config experiments/pretrain_arith.py:tiny \
        [--quantized] [--host 127.0.0.1 --port 8000] [--max-batch 8] [--context N]

--checkpoint takes what `moe-jax sample` takes (a training workdir or one of its
checkpoint directories, a `moe-jax convert` output, a `moe-jax quantize` output);
--config is needed when it holds no model_config.json. --quantized serves the weights
rounded through int8 (what `moe-jax quantize --bits 8` writes). --max-batch is the
number of decode slots; --context the tokens (prompt + completion) a slot holds
(default: model.max_seq_len). The server prints one line with its URL once the model
is compiled and it listens; then, e.g.:

    curl -s localhost:8000/v1/completions -H 'content-type: application/json' \
        -d '{"model": "arith", "prompt": "12+34=", "max_tokens": 40, "temperature": 0}'

Any OpenAI client works: OpenAI(base_url="http://localhost:8000/v1", api_key="unused").
"""

from __future__ import annotations

import sys

from moe_jax.serve.loading import add_model_arguments


def _serve(args) -> int:
    from moe_jax.serve.runner import bind, build_server, uvicorn_server

    try:
        served = build_server(args.checkpoint, config=args.config, overrides=args.override,
                              quantize=args.quantized, num_slots=args.max_batch,
                              context=args.context, model_name=args.model_name,
                              tokenizer=args.tokenizer)
        sock = bind(args.host, args.port)
    except (FileNotFoundError, ValueError, OSError) as e:
        print(f"moe-jax serve: error: {e}", file=sys.stderr)
        return 2
    host, port = sock.getsockname()[:2]
    print(f"moe-jax serve: {served.model_name} on http://{host}:{port} "
          f"({args.max_batch} slots of {served.engine.context} tokens)", flush=True)
    try:
        uvicorn_server(served.app, args.log_level).run(sockets=[sock])
    finally:
        served.engine.stop()
    return 0


def add_serve_command(subparsers) -> None:
    s = subparsers.add_parser("serve", help="serve a checkpoint over an OpenAI-compatible HTTP API")
    add_model_arguments(s)
    s.add_argument("--quantized", action="store_true", help="serve the weights rounded through int8")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    s.add_argument("--max-batch", type=int, default=8, help="decode slots (concurrent requests)")
    s.add_argument("--context", type=int, help="tokens per slot (default: model.max_seq_len)")
    s.add_argument("--model-name", help="the model id clients name (default: the checkpoint's "
                                        "directory name)")
    s.add_argument("--log-level", default="warning", help="uvicorn's log level")
    s.set_defaults(func=_serve)
