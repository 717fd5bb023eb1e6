"""The OpenAI completions protocol: checking a request body and shaping responses.

`parse_completion(body, ...)` turns the decoded JSON body of POST /v1/completions into
engine Requests or raises `RequestError(param, message)`, which the app answers as

    HTTP 400 {"error": {"message": ..., "type": "invalid_request_error", "param": ..., "code": ...}}

Every field is checked for its type and range, and a field this server does not know is
refused by name rather than ignored: a client that sends `best_of` or `suffix` expects
them to do something.
"""

from __future__ import annotations

import dataclasses
import secrets
import time

from moe_jax.infer.engine import Request, TokenInfo
from moe_jax.infer.slots import TOP_LOGPROBS

MAX_N = 16
MAX_STOP = 4
DEFAULT_MAX_TOKENS = 16  # OpenAI's default for completions
# Fields OpenAI defines that are accepted only at the value that means "off".
NEUTRAL = {"presence_penalty": 0, "frequency_penalty": 0, "best_of": 1, "echo": False,
           "suffix": None, "logit_bias": None}


class RequestError(ValueError):
    def __init__(self, param: str | None, message: str, status: int = 400,
                 code: str | None = None):
        super().__init__(message)
        self.param, self.message, self.status, self.code = param, message, status, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": "invalid_request_error",
                          "param": self.param, "code": self.code}}


@dataclasses.dataclass
class Completion:
    """A checked request: engine Requests, one per choice (prompt-major, then n)."""

    requests: list[Request]
    prompts: list[str]  # the prompt text of each request
    n: int  # choices per prompt
    stream: bool
    include_usage: bool
    logprobs: bool


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(body, name, default, low, high, *, low_open=False):
    value = body.get(name, default)
    if value is None:
        value = default
    if not (_is_int(value) or isinstance(value, float)):
        raise RequestError(name, f"{name}: expected a number, got {type(value).__name__}")
    if (value <= low if low_open else value < low) or value > high:
        bound = "(" if low_open else "["
        raise RequestError(name, f"{name} = {value}: expected a number in {bound}{low}, {high}]")
    return float(value)


def _integer(body, name, default, low, high):
    value = body.get(name, default)
    if value is None:
        value = default
    if value is None:
        return None
    if not _is_int(value):
        raise RequestError(name, f"{name}: expected an integer, got {type(value).__name__}")
    if not low <= value <= high:
        raise RequestError(name, f"{name} = {value}: expected an integer in [{low}, {high}]")
    return value


def _prompts(value, tokenizer) -> list[tuple[str, list[int]]]:
    """OpenAI's prompt forms: a string, a list of strings, a list of token ids, or a list
    of lists of token ids -> [(text, token ids)] with <bos> put first as training does."""
    bos = [] if tokenizer.bos_id is None else [tokenizer.bos_id]

    def ids_of(tokens, where):
        if not tokens or not all(_is_int(t) and 0 <= t < tokenizer.vocab_size for t in tokens):
            raise RequestError("prompt", f"{where}: expected a non-empty list of token ids in "
                                         f"[0, {tokenizer.vocab_size})")
        return tokenizer.decode(tokens), bos + list(tokens)

    def text_of(text, where):
        try:
            return text, bos + tokenizer.encode(text)
        except ValueError as e:
            raise RequestError("prompt", f"{where}: {e}") from None

    if isinstance(value, str):
        return [text_of(value, "prompt")]
    if isinstance(value, list) and value:
        if all(isinstance(p, str) for p in value):
            return [text_of(p, f"prompt[{i}]") for i, p in enumerate(value)]
        if all(_is_int(t) for t in value):
            return [ids_of(value, "prompt")]
        if all(isinstance(p, list) for p in value):
            return [ids_of(p, f"prompt[{i}]") for i, p in enumerate(value)]
    raise RequestError("prompt", "prompt: expected a string, a list of strings, a list of token "
                                 "ids or a list of lists of token ids")


def parse_completion(body, model_name: str, tokenizer, check) -> Completion:
    """Check a decoded JSON body; `check(Request)` is the engine's own check (context
    length), whose ValueError names its field first ("max_tokens: ...")."""
    if not isinstance(body, dict):
        raise RequestError("body", "body: expected a JSON object")
    known = {"model", "prompt", "max_tokens", "temperature", "top_p", "n", "stop", "seed",
             "stream", "stream_options", "logprobs", "user"} | set(NEUTRAL)
    for name in body:
        if name not in known:
            raise RequestError(name, f"{name}: unknown field (this server accepts "
                                     f"{', '.join(sorted(known))})")
    for name, neutral in NEUTRAL.items():
        if name in body and body[name] is not None and body[name] != neutral:
            raise RequestError(name, f"{name} = {body[name]!r}: not supported; expected "
                                     f"{neutral!r} or no {name}")
    if "model" not in body:
        raise RequestError("model", "model: required (GET /v1/models lists it)")
    if body["model"] != model_name:
        raise RequestError("model", f"model {body['model']!r} does not exist; this server "
                                    f"serves {model_name!r}", status=404, code="model_not_found")
    if "prompt" not in body:
        raise RequestError("prompt", "prompt: required")
    prompts = _prompts(body["prompt"], tokenizer)
    max_tokens = _integer(body, "max_tokens", DEFAULT_MAX_TOKENS, 1, 2**31 - 1)
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0, low_open=True)
    n = _integer(body, "n", 1, 1, MAX_N)
    seed = _integer(body, "seed", None, 0, 2**32 - 1)
    logprobs = _integer(body, "logprobs", None, 0, TOP_LOGPROBS)
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else (stop or [])
    if not isinstance(stop, list) or len(stop) > MAX_STOP or not all(
            isinstance(s, str) and s for s in stop):
        raise RequestError("stop", f"stop: expected a non-empty string or a list of at most "
                                   f"{MAX_STOP} non-empty strings")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError("stream", f"stream: expected true or false, got {stream!r}")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or set(options) - {"include_usage"} or not isinstance(
            options.get("include_usage", False), bool):
        raise RequestError("stream_options", 'stream_options: expected {"include_usage": bool}')
    if options and not stream:
        raise RequestError("stream_options", "stream_options: only allowed with stream = true")
    if "user" in body and not isinstance(body["user"], str):
        raise RequestError("user", "user: expected a string")

    requests, texts = [], []
    for text, ids in prompts:
        for choice in range(n):
            # Choice i of a seeded request draws from seed + i: n = 1 equals a plain
            # request with that seed, and the choices differ from each other.
            request = Request(tuple(ids), max_tokens, temperature, top_p,
                              None if seed is None else (seed + choice) % 2**32, tuple(stop),
                              logprobs)
            try:
                check(request)
            except ValueError as e:
                field = str(e).split(":", 1)[0]
                raise RequestError(field if field in known else None, str(e)) from None
            requests.append(request)
            texts.append(text)
    return Completion(requests, texts, n, stream, options.get("include_usage", False),
                      logprobs is not None)


def new_id() -> str:
    return "cmpl-" + secrets.token_hex(12)


def logprobs_block(tokens: list[TokenInfo], start: int) -> dict:
    """OpenAI's completion logprobs; text_offset counts from the prompt's start, as
    OpenAI's does (`start` = prompt length in characters)."""
    return {"tokens": [t.text for t in tokens], "token_logprobs": [t.logprob for t in tokens],
            "top_logprobs": [t.top for t in tokens],
            "text_offset": [start + t.offset for t in tokens]}


def completion_body(cid: str, model_name: str, choices: list[dict], usage: dict | None) -> dict:
    body = {"id": cid, "object": "text_completion", "created": int(time.time()),
            "model": model_name, "choices": choices}
    if usage is not None:
        body["usage"] = usage
    return body


def usage_of(prompt_tokens: list[int], completion_tokens: list[int]) -> dict:
    """Usage counts a prompt once however many choices it has (n)."""
    prompt, completion = sum(prompt_tokens), sum(completion_tokens)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}
