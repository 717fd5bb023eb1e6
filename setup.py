"""moe_jax: DeepSeek-style sparse Mixture-of-Experts models and their post-training in JAX."""

from setuptools import find_packages, setup

# `moe-jax serve` (HTTP server, metrics) and `moe-jax export` (jax.export serialization).
SERVE = ["starlette>=0.37", "uvicorn>=0.29", "prometheus-client>=0.20", "flatbuffers>=24.3"]
# DP-SGD's privacy accountant (Google's RDP and PLD accountants): `dp.enabled` runs.
PRIVACY = ["dp-accounting>=0.6"]

setup(
    name="moe_jax",
    version="0.1.0",
    description="DeepSeek-style sparse Mixture-of-Experts language models and post-training in JAX/Flax",
    packages=find_packages(include=["moe_jax", "moe_jax.*"]),
    python_requires=">=3.11",
    install_requires=[
        "jax>=0.10.2",
        "flax>=0.12.0",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11.0",
        "chex>=0.1.88",
        "tensorflow-datasets>=4.9.7",
        "array-record>=0.7.0",
        "ml-collections>=1.0.0",
        "grain>=0.2.10",
        "numpy>=1.26",
        "threadpoolctl>=3.1",  # moe.threaded: one BLAS thread per kernel thread
        "tqdm>=4.66",
        "tokenizers>=0.20",
        "tensorboardX>=2.6",
    ],
    extras_require={
        "test": ["pytest>=8.0", "pytest-timeout>=2.3", "pytest-xdist>=3.5", "nbclient>=0.10", "ipykernel>=6.29", "matplotlib>=3.8",
                 # the serve / export tests: the server's own packages, a real OpenAI client
                 *SERVE, "openai>=1.40", "httpx>=0.27", *PRIVACY],
        "serve": SERVE,
        "privacy": PRIVACY,
        "interop": ["torch==2.13.0", "transformers>=5.15", "safetensors>=0.4"],
        "notebooks": ["matplotlib>=3.8", "jupyter>=1.0"],
        # GPU/TPU grouped-matmul kernels for the dropless engine (moe_jax.moe.ragged_kernels);
        # needs jax >= 0.11.1, and the engine falls back to jax.lax.ragged_dot without it.
        "accelerators": ["tokamax>=0.0.17"],
    },
    entry_points={"console_scripts": ["moe-jax=moe_jax.cli:main"]},
)
