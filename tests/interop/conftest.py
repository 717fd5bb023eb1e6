"""Tiny transformers checkpoints, built and saved once per session."""

import pytest


@pytest.fixture(scope="session")
def hf_checkpoints(tmp_path_factory):
    """name -> (transformers model, checkpoint directory), built on first use."""
    from interop.tiny_hf import build_hf_model, save_hf_model

    cache = {}

    def get(name):
        if name not in cache:
            model = build_hf_model(name)
            cache[name] = model, save_hf_model(model, str(tmp_path_factory.mktemp(name)))
        return cache[name]

    return get
