"""`moe-jax serve`: an OpenAI-compatible completions server for a model.

    moe-jax serve --checkpoint WORKDIR [--config experiments/pretrain_arith.py:tiny] \
        [--quantized] [--host 127.0.0.1 --port 8000] [--max-batch 8] [--context N] \
        [--mesh data=2,expert=4] \
        [--watermark-key K --watermark-delta 2 --watermark-gamma 0.25 --watermark-context 1]

--checkpoint is anything `moe-jax sample` reads (a training workdir, a model directory,
a quantised export); --config only for a workdir that records no config. --quantized
serves the weights rounded through int8 (what `moe-jax quantize --bits 8` writes).
--watermark-key draws every completion with the green-list watermark of that secret key
(`moe-jax watermark detect` finds it).
--max-batch is the number of decode slots; --context the tokens (prompt + completion) a
slot holds (default: model.max_seq_len; a decode step's cost grows with it).
--mesh serves a model too big for one device on a mesh, written as for `moe-jax plan`
(missing axes are 1, one size may be -1 for the rest of the devices): the weights are
placed as training places them (routed experts over `expert`), the slots split over the
batch axes (data, fsdp, expert), so --max-batch must be a multiple of their product.
Without it the model is served on one device. The server
prints one line with its URL once the model is compiled and it listens; then, e.g.:

    curl -s localhost:8000/v1/completions -H 'content-type: application/json' \
        -d '{"model": "arith", "prompt": "12+34=", "max_tokens": 40, "temperature": 0}'

Any OpenAI client works: OpenAI(base_url="http://localhost:8000/v1", api_key="unused").
"""

from __future__ import annotations

import os

from moe_jax.cli.arguments import add_config_arguments, add_watermark_arguments, error, watermark_from_args

INT8_GROUP = 128  # as `moe-jax quantize` writes int8


def add_model_arguments(parser) -> None:
    """What `load_served` reads: --checkpoint, --config (+ overrides), --tokenizer."""
    add_config_arguments(parser, required=False)
    parser.add_argument("--checkpoint", required=True,
                        help="training workdir (or a checkpoints/step/state dir in it), model "
                             "directory or quantised export")
    parser.add_argument("--tokenizer", help="'char' or a tokenizer.json path (default: the run's)")


def load_served(args, quantize: bool = False):
    """-> (model config, params, router_bias, tokenizer name) as `moe-jax sample` loads
    them; quantize: the weights rounded through weight-only int8."""
    from moe_jax.cli.sample import load_for_sampling
    from moe_jax.layers.int_quant import dequantize_tree
    from moe_jax.quant.weights import quantize_tree

    model_config, params, router_bias, tokenizer = load_for_sampling(args)
    if quantize:
        params = dequantize_tree(quantize_tree(params, 8, INT8_GROUP),
                                 model_config.get("param_dtype", "float32"))
    return model_config, params, router_bias, args.tokenizer or tokenizer


def placement_from_args(args):
    """--mesh -> a Placement on that mesh (checked against --max-batch before anything is
    loaded), or None: one device."""
    if args.mesh is None:
        return None
    import jax
    import ml_collections

    from moe_jax.parallel.mesh import parse_mesh_spec
    from moe_jax.train.placement import Placement

    if jax.process_count() > 1:  # the engine's steps would be collectives no peer joins
        raise ValueError(f"--mesh {args.mesh}: serving runs in one process, this is one of "
                         f"{jax.process_count()}; use the devices of one host")
    placement = Placement.from_config(ml_collections.ConfigDict({"mesh": parse_mesh_spec(args.mesh)}))
    if args.max_batch % placement.batch_shards:
        raise ValueError(f"--max-batch {args.max_batch}: expected a multiple of "
                         f"{placement.batch_shards}, the devices the mesh's batch axes split the "
                         f"decode slots over ({placement.describe()})")
    return placement


def _serve(args) -> int:
    from moe_jax.data.tokenizer import get_tokenizer
    from moe_jax.serve.runner import bind, serve_model, uvicorn_server
    from moe_jax.train.checkpoint import CorruptCheckpointError

    try:
        watermark = watermark_from_args(args)
        placement = placement_from_args(args)
        model_config, params, router_bias, tokenizer = load_served(args, args.quantized)
        served = serve_model(model_config, params, router_bias, get_tokenizer(tokenizer),
                             num_slots=args.max_batch, context=args.context,
                             model_name=args.model_name or os.path.basename(
                                 os.path.normpath(args.checkpoint)), watermark=watermark,
                             placement=placement, log=lambda line: print(f"moe-jax serve: {line}",
                                                                         flush=True))
        sock = bind(args.host, args.port)
    except (FileNotFoundError, ValueError, OSError, CorruptCheckpointError) as e:
        return error("serve", e)
    host, port = sock.getsockname()[:2]
    print(f"moe-jax serve: {served.model_name} on http://{host}:{port} "
          f"({args.max_batch} slots of {served.engine.context} tokens)", flush=True)
    try:
        uvicorn_server(served.app, args.log_level).run(sockets=[sock])
    finally:
        served.engine.stop()
    return 0


def add_serve_command(subparsers) -> None:
    s = subparsers.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API")
    add_model_arguments(s)
    s.add_argument("--quantized", action="store_true", help="serve the weights rounded through int8")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    s.add_argument("--max-batch", type=int, default=8, help="decode slots (concurrent requests)")
    s.add_argument("--context", type=int, help="tokens per slot (default: model.max_seq_len)")
    s.add_argument("--mesh", help="serve on a device mesh, AXIS=SIZE over data, fsdp, expert, "
                                  "tensor as for `moe-jax plan`, e.g. data=2,expert=4 (missing "
                                  "axes are 1, one may be -1 for the rest); experts split over "
                                  "expert, decode slots over the batch axes, so --max-batch must "
                                  "be a multiple of data*fsdp*expert (default: one device)")
    s.add_argument("--model-name", help="the model id clients name (default: the checkpoint's "
                                        "directory name)")
    s.add_argument("--log-level", default="warning", help="uvicorn's log level")
    add_watermark_arguments(s)
    s.set_defaults(func=_serve)
