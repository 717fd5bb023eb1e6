"""Serving and shipping a model: an OpenAI-compatible HTTP server over the
continuous-batching engine (`moe_jax.infer.engine`), and exported artefacts.

    loading.py    load_model: the one reader of saved models for serve and export
    protocol.py   the completions request check and response shapes
    app.py        the Starlette app: /v1/completions, /v1/models, /health, /metrics
    metrics.py    Prometheus metrics of the server and its engine
    runner.py     build_server, uvicorn in the foreground or on a thread
    cli.py        `moe-jax serve`

This package sits above infer/ and quant/ (it loads quantised checkpoints).
"""
