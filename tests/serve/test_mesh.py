"""Serving on a mesh (`moe-jax serve --mesh`, `serve_model(placement=...)`): the same
completions as on one device, with the weights and the decode slots really split."""

import contextlib
import io

import jax
import ml_collections
import numpy as np
import pytest
from openai import OpenAI

from moe_jax.cli import build_parser, main
from moe_jax.cli.serve import load_served, placement_from_args
from moe_jax.data.tokenizer import get_tokenizer
from moe_jax.infer.engine import Engine, Request
from moe_jax.infer.slots import decode_slots, prefill_slot
from moe_jax.parallel.mesh import parse_mesh_spec
from moe_jax.serve.runner import ServerThread, serve_model
from moe_jax.train.placement import Placement

CONTEXT = 32  # prompt buckets 16 and 32; every prompt here fits the first
MAX_TOKENS = 16
PROMPTS = ("12+34=", "505-17=", "7*8=", "hello", "99-9=", "abc+1")
SLOTS = 8  # data=2 x expert=4 split the slots 8 ways


def requests(tokenizer):
    """Greedy requests and one seeded sample, each with its top-2 log-probs."""
    ids = [(tokenizer.bos_id,) + tuple(tokenizer.encode(p)) for p in PROMPTS]
    greedy = [Request(p, max_tokens=MAX_TOKENS, logprobs=2) for p in ids]
    return greedy + [Request(ids[0], max_tokens=MAX_TOKENS, temperature=1.0, seed=7, logprobs=2)]


@pytest.fixture(scope="module")
def loaded(checkpoint):
    """(model config, host params, router_bias, tokenizer) as `moe-jax serve` loads them."""
    m, params, router_bias, tokenizer = load_served(build_parser().parse_args(
        ["serve", "--checkpoint", checkpoint]))
    return m, params, router_bias, get_tokenizer(tokenizer)


@pytest.fixture(scope="module")
def one_device(loaded):
    """What the one-device engine returns for `requests`, all submitted at once."""
    m, params, router_bias, tokenizer = loaded
    engine = Engine(m, params, router_bias, tokenizer, num_slots=SLOTS, context=CONTEXT)
    engine.warmup()
    engine.start()
    try:
        return engine.complete(requests(tokenizer), timeout=300)
    finally:
        engine.stop()


@pytest.fixture(scope="module")
def served(checkpoint):
    """`moe-jax serve --mesh data=2,expert=4 --max-batch 8`, as the command builds it:
    -> (Served, its Placement, the lines it logged)."""
    args = build_parser().parse_args(["serve", "--checkpoint", checkpoint, "--mesh", "data=2,expert=4",
                                      "--max-batch", str(SLOTS)])
    placement = placement_from_args(args)
    m, params, router_bias, tokenizer = load_served(args)
    lines = []
    served = serve_model(m, params, router_bias, get_tokenizer(tokenizer), num_slots=args.max_batch,
                         context=CONTEXT, model_name="micro", placement=placement, log=lines.append)
    yield served, placement, lines
    served.engine.stop()


def assert_same_completions(results, reference):
    for got, want in zip(results, reference, strict=True):
        assert (got["text"], got["finish_reason"], got["completion_tokens"]) == (
            want["text"], want["finish_reason"], want["completion_tokens"])
        np.testing.assert_allclose([t.logprob for t in got["tokens"]],
                                   [t.logprob for t in want["tokens"]], rtol=1e-4, atol=1e-5)
        assert [sorted(t.top) for t in got["tokens"]] == [sorted(t.top) for t in want["tokens"]]


def test_cli_mesh_serves_what_one_device_serves(served, one_device, loaded):
    served, placement, lines = served
    engine, tokenizer = served.engine, loaded[3]
    assert dict(placement.shape) == {"data": 2, "fsdp": 1, "expert": 4, "tensor": 1}
    compiled = prefill_slot._cache_size(), decode_slots._cache_size()
    assert_same_completions(engine.complete(requests(tokenizer), timeout=300), one_device)
    # The engine thread stepped under the mesh its warmup compiled under (jax's mesh and
    # flax's rules are per thread): nothing was traced again.
    assert (prefill_slot._cache_size(), decode_slots._cache_size()) == compiled
    # Distinct prompts gave distinct completions: the comparison covers more than one path.
    assert len({r["text"] for r in one_device[:len(PROMPTS)]}) > 1

    # The routed experts [layers, E, D, F] are split over `expert`: one of the 4 per device.
    wi_gate = engine.params["moe_layers"]["moe"]["wi_gate"]
    assert wi_gate.sharding.spec[1] == "expert"
    assert {s.data.shape[1] for s in wi_gate.addressable_shards} == {wi_gate.shape[1] // 4}
    total = sum(x.nbytes for x in jax.tree.leaves(engine.params))
    assert placement.bytes_per_device(engine.params) < total / 2
    assert len(lines) == 1 and "data=2 x fsdp=1 x expert=4 x tensor=1 over 8 cpu" in lines[0]
    assert "per device" in lines[0]

    # The slots stay split over the batch axes after serving (one slot per device).
    for array in [*engine._cache.c_kv.values(), *engine._cache.k_rope.values()]:
        assert array.sharding.spec[1] == ("data", "expert")
        assert {s.data.shape[1] for s in array.addressable_shards} == {1}
    assert engine._cache.lengths.sharding.spec[0] == ("data", "expert")


def test_other_layout_serves_what_one_device_serves(loaded, one_device):
    """fsdp and tensor as well: weights split on embed and on the experts' ffn."""
    m, params, router_bias, tokenizer = loaded
    placement = Placement.from_config(ml_collections.ConfigDict(
        {"mesh": parse_mesh_spec("fsdp=2,expert=2,tensor=2")}))
    served = serve_model(m, params, router_bias, tokenizer, num_slots=4, context=CONTEXT,
                         placement=placement, log=lambda line: None)
    try:  # 4 slots for 7 requests: some wait for a free slot
        assert_same_completions(served.engine.complete(requests(tokenizer), timeout=300), one_device)
    finally:
        served.engine.stop()
    wi_gate = served.engine.params["moe_layers"]["moe"]["wi_gate"]
    assert wi_gate.sharding.spec[1] == "expert" and "tensor" in str(wi_gate.sharding.spec)


def test_openai_client_on_the_mesh(served, one_device):
    served = served[0]
    with ServerThread(served.app) as url:
        client = OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        whole = client.completions.create(model="micro", prompt=list(PROMPTS), max_tokens=MAX_TOKENS,
                                          temperature=0)
        assert [c.text for c in whole.choices] == [r["text"] for r in one_device[:len(PROMPTS)]]
        stream = client.completions.create(model="micro", prompt=PROMPTS[1], max_tokens=MAX_TOKENS,
                                           temperature=0, stream=True)
        assert "".join(c.choices[0].text for c in stream if c.choices) == one_device[1]["text"]


def test_slots_must_split_over_the_mesh(checkpoint, loaded):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):  # refused before the model is loaded
        assert main(["serve", "--checkpoint", checkpoint, "--mesh", "data=2,expert=4",
                     "--max-batch", "6", "--port", "0"]) == 2
    assert "--max-batch 6: expected a multiple of 8" in err.getvalue()

    m, params, router_bias, tokenizer = loaded
    placement = Placement.from_config(ml_collections.ConfigDict({"mesh": parse_mesh_spec("expert=4")}))
    with pytest.raises(ValueError, match="num_slots = 6: expected a multiple of 4"):
        Engine(m, params, router_bias, tokenizer, num_slots=6, context=CONTEXT, placement=placement)
