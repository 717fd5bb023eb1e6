"""Data: tokenizers, synthetic verifiable tasks, TFDS builders and grain pipelines.

Submodules are imported by their users (`from moe_jax.data import pipeline`) so
that importing a tokenizer does not pull in TFDS and grain.
"""
