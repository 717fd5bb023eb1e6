"""The continuous-batching engine against `generate`, and a request alone against the
same request among 31 others."""

import threading

import jax
import numpy as np
import pytest

from helpers import tiny_char_model
from moe_jax.data.tokenizer import CharTokenizer
from moe_jax.infer.engine import Chunk, Done, Engine, Request
from moe_jax.infer.generate import generate
from moe_jax.infer.slots import decode_slots, prefill_slot

TOK = CharTokenizer()
CONTEXT = 64
PROMPTS = ("12+34=", "7-3=", "100+200+3=", "hello world")


def ids(text):
    return (TOK.bos_id,) + tuple(TOK.encode(text))


PROMPTS_IDS = [ids(p) for p in PROMPTS]


@pytest.fixture(scope="module")
def model():
    return tiny_char_model()


@pytest.fixture(scope="module")
def engine(model):
    m, params, router_bias = model
    engine = Engine(m, params, router_bias, TOK, num_slots=32, context=CONTEXT)
    engine.warmup()
    engine.start()
    yield engine
    engine.stop()


def reference(model, prompts, n, **kw):
    """`generate` on left-padded prompts: per prompt (new ids up to and including <eos>,
    their log-probs)."""
    m, params, router_bias = model
    width = max(map(len, prompts))
    batch = np.array([(TOK.pad_id,) * (width - len(p)) + tuple(p) for p in prompts])
    out = generate(m, params, router_bias, batch, np.array([len(p) for p in prompts]),
                   max_new_tokens=n, stop_tokens=(TOK.eos_id,), pad_id=TOK.pad_id, **kw)
    return [(np.asarray(out["tokens"][i, :k]).tolist(), np.asarray(out["logprobs"][i, :k]))
            for i, k in enumerate(np.asarray(out["lengths"]))]


def check_result(result, request, tokens, logprobs):
    assert result["text"] == TOK.decode(tokens)
    assert result["completion_tokens"] == len(tokens)
    assert result["finish_reason"] == ("stop" if tokens[-1] == TOK.eos_id else "length")
    # One entry per token of the text (<eos> has none), log-probs as generate's.
    text_tokens = [t for t in tokens if t != TOK.eos_id]
    assert [t.text for t in result["tokens"]] == [TOK.decode([t]) for t in text_tokens]
    np.testing.assert_allclose([t.logprob for t in result["tokens"]],
                               logprobs[:len(text_tokens)], atol=1e-5)
    assert all(len(t.top) == (request.logprobs or 0) for t in result["tokens"])


def test_greedy_and_seeded_requests_equal_generate(engine, model):
    greedy = [Request(ids(p), max_tokens=20, logprobs=1) for p in PROMPTS]
    # A row of `generate` draws from the batch's key: one prompt alone, with the seed's key.
    seeded = Request(ids(PROMPTS[0]), max_tokens=20, temperature=0.8, top_p=0.9, seed=7,
                     logprobs=0)
    results = engine.complete(greedy + [seeded], timeout=300)
    for request, result, expected in zip(greedy, results, reference(model, PROMPTS_IDS, 20)):
        check_result(result, request, *expected)
    (expected,) = reference(model, [seeded.prompt], 20, temperature=0.8, top_p=0.9,
                            rng=jax.random.PRNGKey(7))
    check_result(results[-1], seeded, *expected)
    top = results[0]["tokens"][0]
    assert top.top == {top.text: top.logprob}  # logprobs=1: the greedy token itself


def test_a_request_alone_equals_it_among_31_others(engine):
    rng = np.random.default_rng(0)
    watched = [Request(ids(PROMPTS[0]), max_tokens=24, logprobs=3),
               Request(ids(PROMPTS[2]), max_tokens=24, temperature=1.0, seed=11, logprobs=3),
               Request(ids(PROMPTS[3]), max_tokens=24, temperature=0.7, top_p=0.8, seed=5)]
    alone = [engine.complete([r], timeout=300)[0] for r in watched]

    # 40 neighbours of other lengths and settings: with 32 slots some wait in the queue
    # and the watched requests join and leave a batch that keeps changing.
    others = []
    for i in range(40):
        text = "".join(rng.choice(list("0123456789+-=")) for _ in range(rng.integers(1, 30)))
        others.append(Request(ids(text), max_tokens=int(rng.integers(1, 30)),
                              temperature=float(rng.choice([0.0, 0.5, 1.3])),
                              top_p=float(rng.choice([1.0, 0.5])), seed=i))
    mixed = others[:20] + watched + others[20:]
    together = engine.complete(mixed, timeout=300)[20:23]
    for a, b in zip(alone, together):
        assert a["text"] == b["text"] and a["finish_reason"] == b["finish_reason"]
        assert [t.logprob for t in a["tokens"]] == [t.logprob for t in b["tokens"]]  # bitwise
        assert [t.top for t in a["tokens"]] == [t.top for t in b["tokens"]]
    stats = engine.stats()
    assert stats["active_slots"] == 0 and stats["queue_depth"] == 0
    assert stats["busy_slot_steps"] > stats["decode_steps"]  # the batch really was shared
    # One compiled decode step for the slot count; prefill once per prompt bucket used.
    assert decode_slots._cache_size() == 1
    assert prefill_slot._cache_size() <= len(engine.buckets)


def test_stop_strings_max_tokens_and_released_text(engine, model):
    full, _ = reference(model, PROMPTS_IDS, 20)[1]  # compiled by the first test
    text = TOK.decode(full)
    assert len(text) >= 12, "the test needs a longer greedy continuation"
    stop = text[6:9]
    cut = text.index(stop)
    chunks, done = [], threading.Event()

    def sink(event):
        if isinstance(event, Chunk):
            chunks.append(event.text)
        else:
            chunks.append(event)
            done.set()

    engine.submit(Request(ids(PROMPTS[1]), max_tokens=20, stop=("never", stop)), sink)
    assert done.wait(300)
    *texts, end = chunks
    assert "".join(texts) == text[:cut] and end.finish_reason == "stop"
    assert all(stop not in "".join(texts[:i + 1]) for i in range(len(texts)))

    short = engine.complete([Request(ids(PROMPTS[1]), max_tokens=3)], timeout=300)[0]
    assert (short["text"], short["finish_reason"], short["completion_tokens"]) == (
        TOK.decode(full[:3]), "length", 3)


def test_cancel_frees_the_slot(engine):
    first, done = threading.Event(), threading.Event()
    events = []

    def sink(event):
        events.append(event)
        (done if isinstance(event, Done) else first).set()

    ticket = engine.submit(Request(ids("1+1="), max_tokens=CONTEXT - 5), sink)
    assert first.wait(300)
    ticket.cancel()
    assert done.wait(300)
    assert events[-1].finish_reason in ("cancelled", "stop")  # stop: <eos> came first
    assert engine.stats()["active_slots"] == 0


@pytest.mark.parametrize("request_, field", [
    (Request((), 4), "prompt"),
    (Request(ids("1" * CONTEXT), 4), "prompt"),
    (Request(ids("1+1="), 0), "max_tokens"),
    (Request(ids("1+1="), CONTEXT), "max_tokens"),
    (Request(ids("1+1="), 4, logprobs=6), "logprobs"),
])
def test_check_names_the_field(engine, request_, field):
    with pytest.raises(ValueError, match=f"^{field}"):
        engine.submit(request_, lambda event: None)
