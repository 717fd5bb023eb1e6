"""`moe-jax serve` end to end: the official OpenAI client, malformed requests, and
clients that disconnect mid-stream."""

import json
import re
import threading
import time

import httpx
import pytest
from openai import OpenAI

from moe_jax.cli import build_parser, main
from moe_jax.cli.serve import load_served
from moe_jax.data.tokenizer import get_tokenizer
from moe_jax.serve.runner import ServerThread, serve_model

PROMPTS = ("12+34=", "505-17=")
MAX_TOKENS = 48
CONTEXT = 64


@pytest.fixture(scope="module")
def server(checkpoint):
    # Loaded as `moe-jax serve --checkpoint DIR` loads it.
    args = build_parser().parse_args(["serve", "--checkpoint", checkpoint])
    model_config, params, router_bias, tokenizer = load_served(args)
    served = serve_model(model_config, params, router_bias, get_tokenizer(tokenizer), num_slots=4,
                         context=CONTEXT, model_name="micro")
    with ServerThread(served.app) as url:
        yield url
    served.engine.stop()


@pytest.fixture(scope="module")
def sampled(checkpoint):
    """What `moe-jax sample` prints for PROMPTS, greedy: {prompt: {"completion", "tokens"}}."""
    import contextlib
    import io

    out = io.StringIO()
    args = ["sample", "--checkpoint", checkpoint, "--max-new-tokens", str(MAX_TOKENS), "--json"]
    with contextlib.redirect_stdout(out):
        assert main(args + [a for p in PROMPTS for a in ("--prompt", p)]) == 0
    return {row["prompt"]: row for row in map(json.loads, out.getvalue().splitlines())}


def metrics(url) -> dict:
    text = httpx.get(url + "/metrics").text
    return {name: float(value) for name, value in re.findall(r"^(\S+) (\S+)$", text, re.MULTILINE)}


def test_openai_client_gets_what_moe_jax_sample_prints(server, sampled):
    client = OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list().data] == ["micro"]

    whole = client.completions.create(model="micro", prompt=list(PROMPTS), max_tokens=MAX_TOKENS,
                                      temperature=0)
    assert [c.text for c in whole.choices] == [sampled[p]["completion"] for p in PROMPTS]
    assert whole.usage.completion_tokens == sum(sampled[p]["tokens"] for p in PROMPTS)
    assert whole.usage.prompt_tokens == sum(len(p) + 1 for p in PROMPTS)  # <bos> + chars
    for choice, p in zip(whole.choices, PROMPTS):
        assert choice.finish_reason == ("length" if sampled[p]["tokens"] == MAX_TOKENS else "stop")

    stream = client.completions.create(model="micro", prompt=list(PROMPTS), max_tokens=MAX_TOKENS,
                                       temperature=0, stream=True, logprobs=2,
                                       stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    events = [c.choices[0] for c in chunks if c.choices]
    assert len(events) > MAX_TOKENS  # streamed as drawn, not sent at the end
    for index, p in enumerate(PROMPTS):
        mine = [e for e in events if e.index == index]
        assert "".join(e.text for e in mine) == sampled[p]["completion"]
        assert mine[-1].finish_reason == whole.choices[index].finish_reason
        tokens = [t for e in mine if e.logprobs for t in e.logprobs.tokens]
        assert "".join(tokens) == sampled[p]["completion"]
        tops = [t for e in mine if e.logprobs for t in e.logprobs.top_logprobs]
        assert len(tops) == len(tokens) and all(len(t) == 2 for t in tops)

    # Sampling: choice i of a seeded request is the seed + i request alone.
    kw = dict(model="micro", prompt=PROMPTS[0], max_tokens=12, temperature=1.0)
    two = client.completions.create(n=2, seed=40, **kw)
    alone = [client.completions.create(seed=s, **kw).choices[0].text for s in (40, 41)]
    assert [c.text for c in two.choices] == alone


MALFORMED = [  # (body, the field the error must name, status)
    (b'{"model": "micro", "prompt": ', "body", 400),
    (b'["a list"]', "body", 400),
    ({"prompt": "1+1=", "max_tokens": 4}, "model", 400),
    ({"model": "other", "prompt": "1+1="}, "model", 404),
    ({"model": "micro", "max_tokens": 4}, "prompt", 400),
    ({"model": "micro", "prompt": "1+1=", "colour": "red"}, "colour", 400),
    ({"model": "micro", "prompt": "1+1=", "max_tokens": 0}, "max_tokens", 400),
    ({"model": "micro", "prompt": "1+1=", "max_tokens": "8"}, "max_tokens", 400),
    ({"model": "micro", "prompt": "1+1=", "max_tokens": True}, "max_tokens", 400),
    ({"model": "micro", "prompt": "1" * CONTEXT, "max_tokens": 1}, "prompt", 400),
    ({"model": "micro", "prompt": "1+1=", "max_tokens": CONTEXT}, "max_tokens", 400),
    ({"model": "micro", "prompt": "caf\u00e9"}, "prompt", 400),
    ({"model": "micro", "prompt": 12}, "prompt", 400),
    ({"model": "micro", "prompt": "1+1=", "temperature": -0.5}, "temperature", 400),
    ({"model": "micro", "prompt": "1+1=", "temperature": "hot"}, "temperature", 400),
    ({"model": "micro", "prompt": "1+1=", "top_p": 0}, "top_p", 400),
    ({"model": "micro", "prompt": "1+1=", "n": 0}, "n", 400),
    ({"model": "micro", "prompt": "1+1=", "stop": 5}, "stop", 400),
    ({"model": "micro", "prompt": "1+1=", "seed": -1}, "seed", 400),
    ({"model": "micro", "prompt": "1+1=", "stream": "yes"}, "stream", 400),
    ({"model": "micro", "prompt": "1+1=", "logprobs": 9}, "logprobs", 400),
    ({"model": "micro", "prompt": "1+1=", "best_of": 3}, "best_of", 400),
]


def test_malformed_requests_get_4xx_naming_the_field(server):
    before = metrics(server)
    for body, field, status in MALFORMED:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        r = httpx.post(server + "/v1/completions", content=content,
                       headers={"content-type": "application/json"})
        assert r.status_code == status, (body, r.text)
        error = r.json()["error"]
        assert error["param"] == field and field in error["message"], (body, error)
    after = metrics(server)
    invalid = 'moe_jax_requests_total{outcome="invalid"}'
    assert after[invalid] - before[invalid] == len(MALFORMED)

    r = httpx.post(server + "/v1/completions", json={"model": "micro", "prompt": "1+1=",
                                                     "max_tokens": 3, "temperature": 0})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1
    assert httpx.get(server + "/health").json()["status"] == "ok"
    missing = httpx.get(server + "/v2/nothing")
    assert missing.status_code == 404 and "error" in missing.json()


def _stream(url, prompt, drop_after, out, index):
    """One streaming client; reads `drop_after` events and closes, or everything."""
    body = {"model": "micro", "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0,
            "stream": True}
    text, events = "", 0
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=120) as response:
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            text += json.loads(line[6:])["choices"][0]["text"]
            events += 1
            if drop_after and events >= drop_after:
                break  # leaving the block closes the connection mid-stream
    out[index] = text


def test_clients_that_disconnect_free_their_slots(server, sampled):
    full = sampled[PROMPTS[1]]
    assert full["tokens"] == MAX_TOKENS, "the droppers need a completion without an early <eos>"
    before = metrics(server)
    out = [None] * 10
    threads = [threading.Thread(target=_stream, args=(server, PROMPTS[1], 2 if i % 2 else 0, out, i))
               for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert [out[i] for i in range(0, 10, 2)] == [full["completion"]] * 5
    assert all(len(out[i]) < len(full["completion"]) for i in range(1, 10, 2))

    deadline = time.monotonic() + 30
    while True:  # the last cancels land at the engine's next step
        after = metrics(server)
        if after["moe_jax_slots_active"] == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert after["moe_jax_slots_active"] == 0 and after["moe_jax_queue_depth"] == 0
    for outcome, count in (("ok", 5), ("cancelled", 5)):
        key = f'moe_jax_requests_total{{outcome="{outcome}"}}'
        assert after[key] - before[key] == count
    key = 'moe_jax_choices_finished_total{reason="cancelled"}'
    assert after[key] - before[key] == 5
