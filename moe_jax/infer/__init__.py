"""Inference: the MLA latent KV cache, samplers and batched generation.

    cache.py     KVCache, init_cache, cache_bytes_per_token, left_pad
    generate.py  prefill, extend, decode_step, generate (one jit, lax.while_loop)
    sampling.py  temperature / top-k / top-p, token log-probs
    greedy.py    full-recompute greedy decoding: the reference the cache is tested against
    slots.py     decode slots: independent rows over one latent cache (prefill_slot, decode_slots)
    engine.py    continuous batching over the slots, per-request sampling and stop strings
"""
