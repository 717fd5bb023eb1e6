"""Continuous batching: one thread runs a fixed set of decode slots (`slots.py`) and
admits waiting requests into free slots between steps.

    engine = Engine(model_config, params, router_bias, tokenizer, num_slots=8)
    engine.start()
    ticket = engine.submit(Request(prompt_ids, max_tokens=32, stop=("\\n",)), sink)
    ...                          # sink(Chunk) as text is released, then sink(Done)
    ticket.cancel()              # e.g. the client went away: the slot frees at the next step
    results = engine.complete([Request(...), ...])   # blocking helper

Each loop turn: every waiting request that finds a free slot is prefilled (its prompt
padded to the smallest bucket that holds it, so compiles stay few) and draws its first
token; then one decode step runs over all slots. A request that ends (end-of-sequence
token, a stop string, max_tokens, cancel) frees its slot before the next step, so no
request waits for the longest one. Rows are independent (the dispatch never drops a
token and every row draws from its own key), so a request's tokens are the same alone
or among others.

Text is released in `Chunk`s as tokens are decoded, holding back any tail that could
still become a stop string; the concatenated chunks are the final text.

On a mesh, pass `placement` (a moe_jax.train.placement.Placement, params already on it
with `put_params`): the slots' rows split over its batch axes and every step runs under
its `generation()` context, as `generate` does for evaluation and rollouts. That context
(like jax's mesh and flax's rules) belongs to the thread that enters it, so the engine
enters it on its own thread as well as in the calls made before `start()`.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import secrets
import threading
import time

import jax
import numpy as np

from moe_jax.infer.generate import inference_config
from moe_jax.infer.rows import place_rows, row_shards, sampling_context
from moe_jax.infer.slots import TOP_LOGPROBS, SlotSampling, decode_slots, init_slots, prefill_slot
from moe_jax.infer.watermark import Watermark, context_of

MIN_BUCKET = 16
_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Request:
    prompt: tuple[int, ...]  # token ids, <bos> included when the model uses one
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None  # None: a fresh random seed
    stop: tuple[str, ...] = ()
    logprobs: int | None = None  # alternatives per token to report (0..TOP_LOGPROBS)


@dataclasses.dataclass
class TokenInfo:
    text: str
    logprob: float
    top: dict[str, float]  # the `logprobs` most likely tokens' text -> log-prob
    offset: int  # character offset of the token in the completion


@dataclasses.dataclass
class Chunk:
    text: str
    tokens: list[TokenInfo]  # empty unless the request asked for logprobs


@dataclasses.dataclass
class Done:
    finish_reason: str  # "stop" (end of sequence or a stop string), "length", "cancelled",
    # "error" (the engine failed while the request was in a slot)
    prompt_tokens: int
    completion_tokens: int


class Ticket:
    """A submitted request; `cancel()` frees its slot at the engine's next turn."""

    def __init__(self, request: Request, sink):
        self.request, self.sink = request, sink
        self.cancelled = False
        self.submitted = time.monotonic()

    def cancel(self):
        self.cancelled = True

    def send(self, event):
        """Hand an event to the sink; a sink that fails cancels its request instead of
        stopping the engine."""
        try:
            self.sink(event)
        except Exception:  # the sink is the caller's code: its failure is that request's
            _log.exception("moe_jax engine: a request's sink failed; cancelling it")
            self.cancelled = True


def prompt_buckets(context: int) -> tuple[int, ...]:
    """Prompt lengths prefill compiles for: powers of two from MIN_BUCKET, then context."""
    buckets, b = [], MIN_BUCKET
    while b < context:
        buckets.append(b)
        b *= 2
    return tuple(buckets) + (context,)


class _Running:
    """Host-side state of a request in a slot: its tokens, its text, what was released."""

    def __init__(self, ticket: Ticket, tokenizer, key):
        self.ticket, self.tokenizer, self.key = ticket, tokenizer, key
        self.ids: list[int] = []  # generated, end-of-sequence excluded
        self.generated = 0  # end-of-sequence included
        self.text = ""
        self.released = 0  # characters of text sent
        self.tokens: list[TokenInfo] = []
        self.tokens_sent = 0
        self.finish_reason = None

    def add(self, token: int, logprob: float, top_values, top_ids) -> None:
        request, tok = self.ticket.request, self.tokenizer
        self.generated += 1
        if token == tok.eos_id:
            self.finish_reason = "stop"
        else:
            self.ids.append(token)
            offset = len(self.text)
            self.text = tok.decode(self.ids)
            if request.logprobs is not None:
                top = {tok.decode([int(i)]): float(v)
                       for v, i in zip(top_values[:request.logprobs], top_ids[:request.logprobs])}
                self.tokens.append(TokenInfo(tok.decode([token]), float(logprob), top, offset))
            cut = min((i for i in (self.text.find(s, max(0, offset - len(s) + 1))
                                   for s in request.stop) if i >= 0), default=-1)
            if cut >= 0:
                self.text, self.finish_reason = self.text[:cut], "stop"
            elif self.generated >= request.max_tokens:
                self.finish_reason = "length"
        self._release()

    def _release(self):
        if self.finish_reason:
            upto = len(self.text)
            tokens = [t for t in self.tokens[self.tokens_sent:] if t.offset < upto]
        else:
            upto = len(self.text) - self._held_back()
            tokens = [t for t in self.tokens[self.tokens_sent:] if t.offset + len(t.text) <= upto]
        if upto > self.released or tokens:
            self.ticket.send(Chunk(self.text[self.released:upto], tokens))
            self.released = max(self.released, upto)
            self.tokens_sent += len(tokens)

    def _held_back(self) -> int:
        """Characters at the end that may still turn out to begin a stop string (or an
        unfinished multi-byte character)."""
        text, held = self.text, 0
        for s in self.ticket.request.stop:
            for n in range(min(len(s) - 1, len(text)), held, -1):
                if text.endswith(s[:n]):
                    held = n
                    break
        while held < len(text) and text[len(text) - 1 - held] == "\ufffd":
            held += 1
        return held


class Engine:
    """Continuous batching over `num_slots` decode slots of `context` tokens each."""

    def __init__(self, model_config, params, router_bias, tokenizer, *, num_slots: int = 8,
                 context: int | None = None, cache_dtype=None, watermark: Watermark | None = None,
                 placement=None):
        """watermark: every request is drawn with its green-list bias (a server-wide
        setting: the key is the operator's, not the client's). placement: the mesh to
        run on, anything with a `generation()` context (a Placement; infer/ sits below
        train/, so it is not imported here); None: one device. num_slots must then be a
        multiple of the devices its batch axes split rows over."""
        self.m = inference_config(model_config)
        self._on_mesh = contextlib.nullcontext if placement is None else placement.generation
        self.watermark = watermark
        self.params, self.router_bias = params, router_bias or {}
        self.tokenizer = tokenizer
        # The model's table may be padded past the tokenizer; those ids are never drawn.
        self.vocab = min(int(self.m.vocab_size), int(tokenizer.vocab_size))
        self.context = int(context or self.m.max_seq_len)
        if self.context < 2:
            raise ValueError(f"context = {self.context}: expected at least 2 tokens")
        self.num_slots = int(num_slots)
        if self.num_slots < 1:
            raise ValueError(f"num_slots = {num_slots}: expected at least 1")
        with self._on_mesh(), sampling_context():
            shards = row_shards()
            if self.num_slots % shards:
                raise ValueError(f"num_slots = {num_slots}: expected a multiple of {shards}, the "
                                 "devices the mesh's batch axes split the slots over")
            self._cache = init_slots(self.m, self.num_slots, self.context, cache_dtype)
        self.buckets = prompt_buckets(self.context)
        self._running: list[_Running | None] = [None] * self.num_slots
        self._next = np.zeros(self.num_slots, np.int32)  # each slot's token to feed next
        self._pending: collections.deque[Ticket] = collections.deque()
        self._wake = threading.Condition()
        self._thread = None
        self._stop = False
        self.counters = collections.Counter()  # see `stats`
        self._token_times: collections.deque = collections.deque(maxlen=4096)  # (time, tokens)

    # -- public ------------------------------------------------------------------------

    def check(self, request: Request) -> None:
        """Raise ValueError("<field>: ...") if the engine cannot serve the request."""
        n = len(request.prompt)
        if n < 1:
            raise ValueError("prompt: expected at least one token")
        if n >= self.context:
            raise ValueError(f"prompt: {n} tokens, the context holds {self.context} (prompt + "
                             "completion); expected a shorter prompt")
        if request.max_tokens < 1:
            raise ValueError(f"max_tokens: {request.max_tokens}, expected at least 1")
        if n + request.max_tokens > self.context:
            raise ValueError(f"max_tokens: {n} prompt tokens + {request.max_tokens} exceed the "
                             f"context of {self.context}; expected at most {self.context - n}")
        if request.logprobs is not None and not 0 <= request.logprobs <= TOP_LOGPROBS:
            raise ValueError(f"logprobs: {request.logprobs}, expected 0..{TOP_LOGPROBS}")

    def submit(self, request: Request, sink) -> Ticket:
        """Queue a request; `sink` is called from the engine thread with Chunk and Done."""
        self.check(request)
        ticket = Ticket(request, sink)
        with self._wake:
            self._pending.append(ticket)
            self._wake.notify()
        return ticket

    def complete(self, requests, timeout: float | None = None) -> list[dict]:
        """Run requests to the end (the engine must be started): per request
        {"text", "finish_reason", "tokens" [TokenInfo], "completion_tokens"}."""
        results = [{"text": "", "tokens": []} for _ in requests]
        done = [threading.Event() for _ in requests]

        def sink_for(result, finished):
            def sink(event):
                if isinstance(event, Chunk):
                    result["text"] += event.text
                    result["tokens"] += event.tokens
                else:
                    result["finish_reason"] = event.finish_reason
                    result["completion_tokens"] = event.completion_tokens
                    finished.set()
            return sink

        for request, result, finished in zip(requests, results, done):
            self.submit(request, sink_for(result, finished))
        for finished in done:
            if not finished.wait(timeout):
                raise TimeoutError("the engine did not finish the requests in time")
        return results

    def stats(self, window: float = 10.0) -> dict:
        """Counters since start (prefills, decode_steps, busy_slot_steps, tokens_generated,
        finished_<reason>), queue_depth, active_slots, num_slots, and tokens_per_second
        over the last `window` seconds."""
        with self._wake:
            queued = len(self._pending)
        now = time.monotonic()
        recent = sum(n for t, n in list(self._token_times) if t >= now - window)
        return {"queue_depth": queued, "active_slots": sum(r is not None for r in self._running),
                "num_slots": self.num_slots, "tokens_per_second": recent / window,
                **self.counters}

    def start(self) -> Engine:
        self._thread = threading.Thread(target=self._loop, name="moe-jax-engine", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._wake:
            self._stop = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()

    def warmup(self, buckets=None) -> None:
        """Compile the decode step and the prefill of `buckets` (default: the smallest)
        before serving, by running them on an idle engine."""
        if self._thread is not None:
            raise RuntimeError("warmup runs before start()")
        with self._on_mesh():
            for bucket in buckets or self.buckets[:1]:
                self._prefill(0, [0], bucket, self._sampling_rows([None]))
            self._decode(np.zeros(self.num_slots, bool))
        self._cache = self._cache.replace(lengths=self._cache.lengths * 0)

    # -- the engine thread ---------------------------------------------------------------

    def _loop(self):
        with self._on_mesh():
            self._serve()

    def _serve(self):
        while True:
            with self._wake:
                while not self._stop and not self._pending and not any(self._running):
                    self._wake.wait()
                if self._stop:
                    return
            try:
                self._admit()
                self._drop_cancelled()
                active = np.array([r is not None for r in self._running])
                if active.any():
                    self._step(active)
            except Exception:  # fail the requests in flight, keep serving the next ones
                _log.exception("moe_jax engine: a step failed; ending the requests in slots")
                for slot, running in enumerate(self._running):
                    if running is not None:
                        self._running[slot] = None
                        self._finish(running, "error")

    def _admit(self):
        while None in self._running:
            with self._wake:
                if not self._pending:
                    return
                ticket = self._pending.popleft()
            if ticket.cancelled:
                self._finish(_Running(ticket, self.tokenizer, None), "cancelled")
                continue
            slot = self._running.index(None)
            request = ticket.request
            seed = secrets.randbelow(2**32) if request.seed is None else request.seed
            running = _Running(ticket, self.tokenizer, np.asarray(jax.random.PRNGKey(seed)))
            bucket = next(b for b in self.buckets if b >= len(request.prompt))
            draw = self._prefill(slot, request.prompt, bucket, self._sampling_rows([running]))
            self.counters["prefills"] += 1
            self._running[slot] = running
            self._take(slot, draw, 0)
            self._token_times.append((time.monotonic(), 1))

    def _drop_cancelled(self):
        for slot, running in enumerate(self._running):
            if running is not None and running.ticket.cancelled:
                self._running[slot] = None
                self._finish(running, "cancelled")

    def _step(self, active):
        draw = self._decode(active)
        self.counters["decode_steps"] += 1
        self.counters["busy_slot_steps"] += int(active.sum())
        for slot in np.flatnonzero(active):
            self._take(int(slot), draw, int(slot))
        self._token_times.append((time.monotonic(), int(active.sum())))

    def _take(self, slot: int, draw, row: int):
        running = self._running[slot]
        token = int(draw[0][row])
        try:
            running.add(token, draw[1][row], draw[2][row], draw[3][row])
        except Exception:  # e.g. the tokenizer: end this request only
            _log.exception("moe_jax engine: processing a token failed")
            running.finish_reason = "error"
        self.counters["tokens_generated"] += 1
        self._next[slot] = token
        if running.finish_reason:
            self._running[slot] = None
            self._finish(running, running.finish_reason)

    def _finish(self, running: _Running, reason: str):
        self.counters[f"finished_{reason}"] += 1
        running.ticket.send(Done(reason, len(running.ticket.request.prompt), running.generated))

    def _sampling_rows(self, rows) -> SlotSampling:
        """Per-row sampling arrays for `rows` (_Running or None for an idle row)."""
        temperature = np.zeros(len(rows), np.float32)
        top_p = np.ones(len(rows), np.float32)
        key = np.zeros((len(rows), 2), np.uint32)
        drawn = np.zeros(len(rows), np.int32)
        h = 0 if self.watermark is None else self.watermark.context
        context = np.full((len(rows), h), self.tokenizer.pad_id, np.int32)
        for i, r in enumerate(rows):
            if r is not None:
                temperature[i], top_p[i] = r.ticket.request.temperature, r.ticket.request.top_p
                key[i], drawn[i] = r.key, r.generated
                if h:  # the tokens fed so far: the prompt, then every drawn one (no <eos>)
                    context[i] = context_of(r.ticket.request.prompt + tuple(r.ids), h,
                                            self.tokenizer.pad_id)
        return SlotSampling(temperature, top_p, key, drawn, context if h else None)

    def _prefill(self, slot, prompt, bucket, sampling):
        tokens = np.full((1, bucket), self.tokenizer.pad_id, np.int32)
        tokens[0, :len(prompt)] = prompt
        # On a mesh the one row becomes copies, one per row shard (rows.py); row 0 is read.
        with sampling_context():
            (tokens,), sampling = _placed((tokens,), sampling)
            self._cache, draw = prefill_slot(self.m, self.params, self.router_bias, self._cache,
                                             np.int32(slot), tokens, np.int32(len(prompt)),
                                             sampling, self.vocab, watermark=self.watermark)
        return jax.device_get(draw)

    def _decode(self, active):
        with sampling_context():
            (tokens, active), sampling = _placed((self._next, active), self._sampling_rows(self._running))
            self._cache, draw = decode_slots(self.m, self.params, self.router_bias, self._cache,
                                             tokens, active, sampling, self.vocab,
                                             watermark=self.watermark)
        return jax.device_get(draw)


def _placed(arrays: tuple, sampling: SlotSampling):
    """Host rows (a tuple of [B, ...] arrays, and a SlotSampling) -> the same split over
    the batch axes of the active mesh, padded with copies of row 0 to a multiple of the
    row shards (rows.place_rows); unchanged without one."""
    fields = [f for f in sampling if f is not None]
    _, placed = place_rows(*arrays, *fields)
    rest = iter(placed[len(arrays):])
    return placed[:len(arrays)], SlotSampling(*(None if f is None else next(rest) for f in sampling))
