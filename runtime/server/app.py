"""The HTTP side: starlette routes over one `Backend` and its `Slot`.

POST /v1/chat/completions and /v1/completions (streamed as Server-Sent Events or not),
GET /v1/models, GET /health. An API key (Bearer) guards everything but /health when one is set;
CORS is off unless origins are given. A body is read up to `max_body` bytes (413 past it) and
must be JSON; every refusal and failure is OpenAI's JSON error shape (runtime/server/errors.py).

A client that goes away is noticed at once (an `http.disconnect` from the server while its request
waits or runs; starlette's own listener once a stream has started): its job is cancelled, so it
leaves the queue or stops at its next step and frees the slot.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Any

from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from qwythos.runtime.server import shapes
from qwythos.runtime.server.backend import Backend
from qwythos.runtime.server.errors import APIError, bad_request
from qwythos.runtime.server.runner import run_chat, run_completion
from qwythos.runtime.server.schema import GenOptions, parse_chat, parse_completion
from qwythos.runtime.server.slot import Job, Slot

#: The largest request body: a few pictures as base64 data URLs (runtime/vision.py caps each at
#: 64 MiB of file) and a long conversation.
MAX_BODY_BYTES = 96 * 2**20
#: Paths served without the API key (a load balancer's probe).
OPEN_PATHS = ("/health",)
#: The shortest time between two writes of a stream: tokens that come faster go out together.
#: Each write wakes the event loop, which competes with the generation for the CPU and the GIL
#: (the trained tiny model at ~600 tok/s on 2 busy cores, 512-token replies read by a plain HTTP
#: client: 9% slower than unstreamed with a write every 20 ms, 2% every 100 ms); 20 updates a
#: second still read as smooth text, and a model slower than that streams token by token.
STREAM_INTERVAL_S = 0.05
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def error_response(e: APIError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers or None)


class _ApiKey:
    """Pure ASGI: every request but OPEN_PATHS (and CORS preflights) needs `Authorization: Bearer KEY`."""

    def __init__(self, app: Any, key: str) -> None:
        self.app = app
        self.expected = f"Bearer {key}".encode()

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS and scope["method"] != "OPTIONS":
            got = Headers(scope=scope).get("authorization", "").encode()
            if not hmac.compare_digest(got, self.expected):
                e = APIError(
                    401, "a valid API key is required (Authorization: Bearer KEY)", None, "invalid_api_key"
                )
                await error_response(e)(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def read_json(request: Request, limit: int) -> Any:
    """The body as JSON: at most `limit` bytes (413), valid UTF-8 JSON (400)."""
    declared = request.headers.get("content-length")
    too_big = APIError(413, f"the request body is larger than {limit} bytes", None, "body_too_large")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise too_big if declared.isdigit() else bad_request("the Content-Length header is not a number")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except (ValueError, RecursionError) as e:
        why = "it is nested too deeply" if isinstance(e, RecursionError) else str(e)[:200]
        raise bad_request(f"the request body is not valid JSON ({why})", None, "invalid_json") from None


async def _disconnected(request: Request) -> None:
    """Returns when the client closes the connection (the body is read by then)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


class _Waiter:
    """The job's next events, or the client's disconnect (which cancels the job)."""

    def __init__(self, request: Request, slot: Slot, job: Job) -> None:
        self.slot, self.job = slot, job
        self.gone = asyncio.ensure_future(_disconnected(request))

    async def next(self) -> list[tuple]:
        get = asyncio.ensure_future(self.job.next_events())
        try:
            await asyncio.wait({get, self.gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not get.done():
                get.cancel()
        if get.done() and not get.cancelled():
            return get.result()
        self.slot.cancel(self.job)
        raise ClientDisconnect

    def stop(self) -> None:
        self.gone.cancel()


class _JobStream(StreamingResponse):
    """A job's stream; however the response ends (a disconnect cancels it before or while it
    iterates), an unfinished job is cancelled, so the slot is freed at the job's next step."""

    def __init__(self, job: Job, slot: Slot, content: AsyncIterator[bytes]) -> None:
        super().__init__(content, media_type="text/event-stream", headers=SSE_HEADERS)
        self.job, self.slot = job, slot

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            if not self.job.finished:
                self.slot.cancel(self.job)


def create_app(
    backend: Backend,
    slot: Slot,
    *,
    api_key: str | None = None,
    cors: tuple[str, ...] = (),
    max_body: int = MAX_BODY_BYTES,
) -> Starlette:
    created = shapes.now()

    async def serve_job(
        request: Request, work: Callable[[Job], Any], opts: GenOptions, kind: str
    ) -> Response:
        job = slot.submit(work, asyncio.get_running_loop(), opts.stream)
        waiter = _Waiter(request, slot, job)
        # a stream's headers go out once the prompt is known to fit ("start"); a reply waits for the end
        ready = ("start", "done", "error") if opts.stream else ("done", "error")
        events: list[tuple] = []
        try:
            while not any(e[0] in ready for e in events):
                events += await waiter.next()
        except ClientDisconnect:
            return Response(status_code=499)  # nobody reads it
        finally:
            waiter.stop()
        first = next(e for e in events if e[0] in ready)
        if first[0] == "error":
            return error_response(first[1])
        rid, model = shapes.new_id("chatcmpl" if kind == "chat" else "cmpl"), backend.name
        if not opts.stream:
            shape = shapes.chat_completion if kind == "chat" else shapes.completion
            return JSONResponse(shape(first[1], rid, shapes.now(), model))
        return _JobStream(job, slot, stream(job, events, rid, model, kind, opts.include_usage))

    async def stream(
        job: Job, events: list[tuple], rid: str, model: str, kind: str, usage: bool
    ) -> AsyncIterator[bytes]:
        t = shapes.now()
        chat = kind == "chat"
        if chat:
            yield shapes.sse(shapes.chat_chunk(rid, t, model, {"role": "assistant", "content": ""}))
        while True:
            deltas = shapes.merge_deltas([e[1] for e in events if e[0] == "delta"])
            if deltas:
                yield b"".join(
                    shapes.sse(
                        shapes.chat_chunk(rid, t, model, d)
                        if chat
                        else shapes.completion_chunk(rid, t, model, d["text"])
                    )
                    for d in deltas
                )
            end = next((e for e in events if e[0] in ("done", "error")), None)
            if end is not None and end[0] == "error":  # after the headers: an error event (clients raise it)
                yield shapes.sse(end[1].body())
                break
            if end is not None:
                final = shapes.chat_final_chunks if chat else shapes.completion_final_chunks
                yield b"".join(shapes.sse(c) for c in final(end[1], rid, t, model, usage))
                break
            if deltas:  # a fast model's tokens go out in groups: at most one write per interval
                await job.settle(STREAM_INTERVAL_S)
            events = await job.next_events()
        yield shapes.SSE_DONE

    async def chat(request: Request) -> Response:
        req = parse_chat(await read_json(request, max_body), backend.names, backend.image_placeholder)
        return await serve_job(request, partial(run_chat, backend, req), req.options, "chat")

    async def completions(request: Request) -> Response:
        req = parse_completion(await read_json(request, max_body), backend.names, backend.n_vocab)
        return await serve_job(request, partial(run_completion, backend, req), req.options, "completion")

    async def models(request: Request) -> Response:
        return JSONResponse(shapes.models(backend.names, created, backend.describe()))

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "model": backend.name, "slot": slot.status()})

    async def on_api_error(request: Request, e: APIError) -> Response:
        return error_response(e)

    async def on_http_error(request: Request, e: HTTPException) -> Response:
        what = {404: "there is nothing at this path", 405: "this path does not take that method"}
        return error_response(APIError(e.status_code, what.get(e.status_code, str(e.detail))))

    async def on_disconnect(request: Request, e: ClientDisconnect) -> Response:
        return Response(status_code=499)

    async def on_crash(request: Request, e: Exception) -> Response:
        return error_response(APIError(500, f"internal error: {type(e).__name__}", None, "internal_error"))

    middleware = []
    if cors:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(cors),
                allow_methods=["GET", "POST", "OPTIONS"],
                allow_headers=["Authorization", "Content-Type"],
            )
        )
    if api_key:
        middleware.append(Middleware(_ApiKey, key=api_key))
    return Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
        ],
        middleware=middleware,
        exception_handlers={
            APIError: on_api_error,
            HTTPException: on_http_error,
            ClientDisconnect: on_disconnect,
            Exception: on_crash,
        },
    )
