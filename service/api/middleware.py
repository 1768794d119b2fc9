"""ASGI middleware: body limits and pacing enforced while the body streams in, metrics."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.pacing import BodyClock, BodyPacing
from service.api.problems import problem_json, send_problem
from service.ops.metrics import Metrics

log = logging.getLogger("service.access")

# Multipart framing (boundaries, part headers, other form fields) on top of the file itself.
MULTIPART_ALLOWANCE = 64 * 1024
# What nginx logs for a request whose client left before the answer: no HTTP status says it.
CLIENT_CLOSED_REQUEST = 499


class BodySizeLimit:
    """ASGI middleware: 413 for bodies over `limit_for(path)`, declared or streamed, and 408 for
    a body that arrives too slowly for `pacing` (a stall, a rate below the least, a deadline).

    Starlette spools a multipart upload to disk before any route code runs, so a limit checked
    in the route would still let a client fill the disk; this one stops reading at the limit.
    """

    def __init__(
        self,
        app: ASGIApp,
        limit_for: Callable[[str], int],
        timeout_s: float | None = None,
        pacing: BodyPacing | None = None,
    ) -> None:
        self.app = app
        self.limit_for = limit_for
        # `timeout_s` alone: a stall limit and nothing else.
        self.pacing = pacing or BodyPacing(timeout_s or math.inf, math.inf, 0, 0)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on, refusing it once its body exceeds the limit."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"]) + MULTIPART_ALLOWANCE
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _refuse(send, limit)
            return
        clock: BodyClock | None = None
        started = refused = complete = False

        async def counting_receive() -> Message:
            nonlocal clock, refused, complete
            if refused:
                return {"type": "http.disconnect"}
            if complete:
                # After the body, receive() waits for the client to leave, which may rightly
                # take as long as the answer does.
                return await receive()
            clock = clock or BodyClock(self.pacing)
            allowed, reason = clock.allowance()
            waiting = time.monotonic()
            try:
                async with asyncio.timeout(None if math.isinf(allowed) else max(allowed, 0)):
                    message = await receive()
            except TimeoutError:
                refused = True
                if not started:
                    await _send_problem(send, 408, clock.problem(reason))
                return {"type": "http.disconnect"}
            complete = not message.get("more_body", False)
            clock.note(time.monotonic() - waiting, len(message.get("body", b"")))
            if clock.received > limit and not started:
                # Answer now and tell the app the client left: it stops reading the body.
                refused = True
                await _refuse(send, limit)
                return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused:
                return  # the client already has its 413 or 408
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not refused:
                raise


async def _refuse(send: Send, limit: int) -> None:
    detail = (
        f"the request body is larger than the {limit} byte limit for this "
        "endpoint (UNET_MAX_UPLOAD_BYTES for images, UNET_MAX_DATASET_BYTES for "
        "calibration zips); send a smaller file"
    )
    await _send_problem(
        send, 413, problem_json(413, "Upload too large", detail, slug="upload-too-large")
    )


async def _send_problem(send: Send, status: int, body: bytes) -> None:
    """A complete problem response that asks the server to close the connection."""
    await send_problem(send, status, body, [(b"connection", b"close")])


class RequestMetrics:
    """ASGI middleware: count, time and log every request by its route template.

    Plain ASGI rather than `@app.middleware("http")`: Starlette's BaseHTTPMiddleware copies
    every response through a stream and cost about a millisecond per request.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on and record its route, status and duration."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        root_path = scope.get("root_path", "")  # a Mount extends it by its prefix
        status: int | None = None
        failed = True

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
            failed = False
        finally:
            if status is None:  # no answer: an error (uvicorn answers 500), or the client left
                status = 500 if failed else CLIENT_CLOSED_REQUEST
            elapsed = time.perf_counter() - started
            route = _route_label(scope, root_path)
            method = scope["method"]
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(elapsed)
            log.info(
                "%s %s %d",
                method,
                scope["path"],
                status,
                extra={"route": route, "status": status, "ms": round(elapsed * 1000, 2)},
            )


def install_metrics(app: FastAPI, metrics: Metrics) -> None:
    """Count, time and log every request; `/metrics` reads `app.state.metrics`."""
    app.state.metrics = metrics
    app.add_middleware(RequestMetrics, metrics=metrics)


def _route_label(scope: Scope, root_path: str = "") -> str:
    """The matched route's template (`/v1/models/{model}/mask`), never a raw path with values."""
    if "route" in scope:  # FastAPI's routes leave themselves in the scope
        return str(getattr(scope["route"], "path", "unmatched"))
    mount = scope.get("root_path", "")[len(root_path) :]
    if mount:  # a mounted app such as the static files: one label for all its paths
        return f"{mount}/{{path}}"
    if "endpoint" in scope and not scope.get("path_params"):
        return str(scope["path"])  # a plain fixed-path route, such as FastAPI's /docs
    return "unmatched"
