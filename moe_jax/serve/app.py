"""The HTTP server: an OpenAI-compatible completions API over the continuous-batching
engine (Starlette on uvicorn).

    POST /v1/completions   prompt, max_tokens, temperature, top_p, stop, n, seed, stream
                           (server-sent events), logprobs; OpenAI's response shapes
    GET  /v1/models        the one model served
    GET  /health           {"status": "ok", ...}
    GET  /metrics          Prometheus text (metrics.py)

Request handling runs on the event loop; the engine runs on its own thread and hands
events back with `loop.call_soon_threadsafe`. A client that goes away (mid-stream or
while waiting for a whole completion) is noticed from the ASGI `http.disconnect`
message, and its requests are cancelled, which frees their slots at the engine's next
step.
"""

from __future__ import annotations

import asyncio
import json
import time

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from moe_jax.infer.engine import Chunk, Done
from moe_jax.serve.metrics import ServerMetrics
from moe_jax.serve.protocol import (Completion, RequestError, completion_body, logprobs_block,
                                    new_id, parse_completion, usage_of)


async def _wait_for_disconnect(receive):
    while (await receive())["type"] != "http.disconnect":
        pass


class _Choices:
    """Submits a Completion's requests and gathers their events on the event loop."""

    def __init__(self, engine, completion: Completion):
        loop = asyncio.get_running_loop()
        self.completion = completion
        self.events: asyncio.Queue = asyncio.Queue()
        self.done: dict[int, Done] = {}
        self.tickets = []
        for i, request in enumerate(completion.requests):
            self.tickets.append(engine.submit(request, self._sink(loop, i)))

    def _sink(self, loop, i):
        # Called on the engine thread: hand the event to the event loop.
        return lambda event: loop.call_soon_threadsafe(self.events.put_nowait, (i, event))

    @property
    def finished(self) -> bool:
        return len(self.done) == len(self.tickets)

    async def next(self, disconnect: asyncio.Future):
        """The next (choice, event), or None once the client has gone away."""
        get = asyncio.ensure_future(self.events.get())
        await asyncio.wait({get, disconnect}, return_when=asyncio.FIRST_COMPLETED)
        if not get.done():
            get.cancel()
            return None
        i, event = get.result()
        if isinstance(event, Done):
            self.done[i] = event
        return i, event

    def cancel(self):
        for ticket in self.tickets:
            ticket.cancel()

    def usage(self) -> dict:
        prompts = self.completion.requests[::self.completion.n]  # each prompt once, not per choice
        return usage_of([len(r.prompt) for r in prompts],
                        [d.completion_tokens for d in self.done.values()])

    def outcome(self) -> str:
        reasons = {d.finish_reason for d in self.done.values()}
        return "error" if "error" in reasons else "cancelled" if "cancelled" in reasons else "ok"


class _EventStream:
    """An ASGI response streaming a completion as server-sent events, which cancels the
    completion's requests when the client disconnects."""

    def __init__(self, server: _Server, choices: _Choices, started: float):
        self.server, self.choices, self.started = server, choices, started

    async def __call__(self, scope, receive, send):
        server, choices = self.server, self.choices
        cid, name = new_id(), server.model_name
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream; charset=utf-8"),
                                (b"cache-control", b"no-cache")]})
        disconnect = asyncio.ensure_future(_wait_for_disconnect(receive))

        async def emit(payload):
            data = payload if isinstance(payload, str) else json.dumps(payload)
            await send({"type": "http.response.body", "body": f"data: {data}\n\n".encode(),
                        "more_body": True})

        try:
            while not choices.finished:
                item = await choices.next(disconnect)
                if item is None:
                    break
                i, event = item
                choice = {"index": i, "text": "", "logprobs": None, "finish_reason": None}
                if isinstance(event, Chunk):
                    choice["text"] = event.text
                    if choices.completion.logprobs:
                        start = len(choices.completion.prompts[i])
                        choice["logprobs"] = logprobs_block(event.tokens, start)
                else:
                    choice["finish_reason"] = event.finish_reason
                await emit(completion_body(cid, name, [choice], None))
            if choices.finished:
                if choices.completion.include_usage:
                    await emit(completion_body(cid, name, [], choices.usage()))
                await emit("[DONE]")
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:  # the server noticed the disconnect first, on a send
            pass
        finally:
            disconnect.cancel()
            server.finish(choices, self.started)


class _Server:
    def __init__(self, engine, tokenizer, model_name: str):
        self.engine, self.tokenizer, self.model_name = engine, tokenizer, model_name
        self.metrics = ServerMetrics(engine)
        self.created = int(time.time())

    def finish(self, choices: _Choices, started: float):
        """Cancel whatever is still running (a no-op after a normal end) and count it."""
        outcome = choices.outcome() if choices.finished else "cancelled"
        choices.cancel()
        self.metrics.requests.labels(outcome).inc()
        if outcome == "ok":
            self.metrics.latency.observe(time.monotonic() - started)

    async def completions(self, request):
        started = time.monotonic()
        try:
            raw = await request.body()
            try:
                body = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise RequestError("body", f"body: not valid JSON: {e}") from None
            completion = parse_completion(body, self.model_name, self.tokenizer, self.engine.check)
        except RequestError as e:
            self.metrics.requests.labels("invalid").inc()
            return JSONResponse(e.body(), status_code=e.status)
        choices = _Choices(self.engine, completion)
        if completion.stream:
            return _EventStream(self, choices, started)
        return await self._whole(request, choices, started)

    async def _whole(self, request, choices: _Choices, started: float):
        texts = [""] * len(choices.tickets)
        tokens = [[] for _ in choices.tickets]
        disconnect = asyncio.ensure_future(_wait_for_disconnect(request.receive))
        try:
            while not choices.finished:
                item = await choices.next(disconnect)
                if item is None:
                    return Response(status_code=499)  # nobody is listening any more
                i, event = item
                if isinstance(event, Chunk):
                    texts[i] += event.text
                    tokens[i] += event.tokens
        finally:
            disconnect.cancel()
            self.finish(choices, started)
        if choices.outcome() == "error":
            return JSONResponse({"error": {"message": "the engine failed on this request",
                                           "type": "server_error", "param": None, "code": None}},
                                status_code=500)
        out = []
        for i, done in sorted(choices.done.items()):
            start = len(choices.completion.prompts[i])
            out.append({"index": i, "text": texts[i], "finish_reason": done.finish_reason,
                        "logprobs": logprobs_block(tokens[i], start)
                        if choices.completion.logprobs else None})
        return JSONResponse(completion_body(new_id(), self.model_name, out, choices.usage()))

    async def models(self, request):
        return JSONResponse({"object": "list", "data": [
            {"id": self.model_name, "object": "model", "created": self.created,
             "owned_by": "moe_jax"}]})

    async def health(self, request):
        stats = self.engine.stats()
        return JSONResponse({"status": "ok", "model": self.model_name,
                             "slots_active": stats["active_slots"],
                             "slots_total": stats["num_slots"], "queue_depth": stats["queue_depth"]})

    async def metrics_text(self, request):
        return Response(self.metrics.render(), media_type="text/plain; version=0.0.4")


async def _http_error(request, exc: HTTPException):
    return JSONResponse({"error": {"message": f"{request.method} {request.url.path}: {exc.detail}",
                                   "type": "invalid_request_error", "param": None, "code": None}},
                        status_code=exc.status_code)


def create_app(engine, tokenizer, model_name: str) -> Starlette:
    """The ASGI app over a started `infer.engine.Engine`."""
    server = _Server(engine, tokenizer, model_name)
    app = Starlette(routes=[
        Route("/v1/completions", server.completions, methods=["POST"]),
        Route("/v1/models", server.models, methods=["GET"]),
        Route("/health", server.health, methods=["GET"]),
        Route("/metrics", server.metrics_text, methods=["GET"]),
    ], exception_handlers={HTTPException: _http_error})
    app.state.server = server
    return app
