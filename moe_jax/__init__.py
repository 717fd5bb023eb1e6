"""moe_jax: DeepSeek-style sparse Mixture-of-Experts models and their post-training in JAX.

Read it bottom-up; each row imports only from rows above it (and within its own
subpackage), lazy imports inside functions included (tests/test_layering.py checks):

    layers/     norms, RoPE + YaRN, SwiGLU, Multi-head Latent Attention, FP8 block numerics,
                int8/int4 group-wise numerics
    moe/        router, dispatch engines, grouped matmul, expert parallelism (the one shard_map), block
    models/     model config + validation, presets, the decoder (dense-first, scanned MoE, MTP),
                parameter roles (what each weight is: quantisation, LoRA and HF names read them)
    config.py   experiment files and presets by spec, `--config.x=y` overrides
    data/ parallel/ infer/ interop/
                tasks, tokenizers, TFDS, grain | mesh, sharding rules, multi-host |
                MLA cache, sampler, continuous batching | HF safetensors in and out, model dirs,
                the quantised-export format and its reader
    analysis/   reading a model: held-out exact match, teacher-forced scores, the membership
                attack, the watermark study, slip counts (given a loaded model and records)
    train/      TrainState, the pure step, the training loop, checkpoints, metrics, figures,
                and the one loader of a finished run's model (train/loader.py)
    quant/ lora/ distill/
                which weights to quantise, writing quantised exports | LoRA, QLoRA | distillation
    rl/         GRPO family: losses, rollouts, learner, loop
    grm/        the generative reward model (SPCT) and its inference-time scaling
    jobs/ serve/
                named runs and the recipes experiments build on | OpenAI-compatible server,
                exported artefacts
    sweeps/     an experiment's sweep() x seeds run as jobs, and the table and figures of
                their Summaries (below jobs/: it reads what every job records)
    main.py cli/  python -m moe_jax.main, the moe-jax command

Two changes to the plainest order, on purpose, so that peers in a row never import each
other: analysis/ has a row of its own under data/ and infer/, whose records and sampler
it reads (training evaluates with its exact match), and rl/ sits below grm/ because the
GRM is itself trained with GRPO. Analyses take a loaded model and never load one: the
caller does (train.loader, data.splits). The one loader in train/ reads quantised exports
through interop/ (the format) and layers/ (the numerics), never quant/, which only
decides what to quantise and writes. LAYERS below is the order as data.
"""

LAYERS = (
    ("layers",), ("moe",), ("models",), ("config",), ("data", "parallel", "infer", "interop"),
    ("analysis",), ("train",), ("quant", "lora", "distill"), ("rl",), ("grm",), ("jobs", "serve"),
    ("sweeps",), ("main", "cli"),
)
