"""Serving and shipping a model: an OpenAI-compatible HTTP server over the
continuous-batching engine (`moe_jax.infer.engine`), and exported artefacts.

    protocol.py   the completions request check and response shapes
    app.py        the Starlette app: /v1/completions, /v1/models, /health, /metrics
    metrics.py    Prometheus metrics of the server and its engine
    runner.py     serve_model, uvicorn in the foreground or on a thread
    export.py     jax.export artefacts (`moe-jax export`); standalone_loader.py runs them

The commands live in moe_jax/cli/serve.py and moe_jax/cli/export.py.
This package sits above infer/ and quant/ (an export can carry int8 weights).
"""
