"""ASGI middleware: body limits and pacing enforced while the body streams in, metrics."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.pacing import BodyClock, BodyPacing
from service.api.problems import problem_json, send_problem
from service.ops import tracing
from service.ops.context import accepted_request_id, bound_request_id
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
    """ASGI middleware: count, time, trace and log every request by its route template.

    It also takes or makes the request's id (`X-Request-ID`, echoed) and binds it for every log
    line of the request. Plain ASGI rather than `@app.middleware("http")`: Starlette's
    BaseHTTPMiddleware copies every response through a stream and cost about a millisecond per
    request.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on and record its route, status and duration."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        request_id = accepted_request_id(headers.get(b"x-request-id"))
        with (
            bound_request_id(request_id),
            tracing.request_span(scope["method"], _trace_headers(headers)) as span,
        ):
            await self._serve(scope, receive, send, request_id, span)

    async def _serve(
        self, scope: Scope, receive: Receive, send: Send, request_id: str, span: Any
    ) -> None:
        started = time.perf_counter()
        root_path = scope.get("root_path", "")  # a Mount extends it by its prefix
        model = self._inference_model(scope)
        answer = _Answer()
        failed = True

        async def counting_receive() -> Message:
            message = await receive()
            answer.bytes_in += len(message.get("body", b""))
            return message

        async def recording_send(message: Message) -> None:
            answer.note(message)
            if message["type"] == "http.response.start":
                echoed = (b"x-request-id", request_id.encode())
                message["headers"] = [*message.get("headers", []), echoed]
            await send(message)

        if model is not None:
            self.metrics.in_flight.labels(model).inc()
        try:
            await self.app(scope, counting_receive, recording_send)
            failed = False
        finally:
            if answer.status is None:  # no answer: an error (uvicorn's 500), or the client left
                answer.status = 500 if failed else CLIENT_CLOSED_REQUEST
            elapsed = time.perf_counter() - started
            route = _route_label(scope, root_path)
            method = scope["method"]
            self.metrics.requests.labels(method, route, str(answer.status)).inc()
            self.metrics.latency.labels(method, route).observe(elapsed)
            if model is not None:
                self.metrics.in_flight.labels(model).dec()
                self.metrics.count_request(model, answer.status)
            if span is not None:
                span.update_name(f"{method} {route}")
                span.set_attribute("http.route", route)
                span.set_attribute("http.response.status_code", answer.status)
            client = scope.get("client")
            log.log(
                logging.DEBUG if route in PROBES else logging.INFO,
                "%s %s %d",
                method,
                scope["path"],
                answer.status,
                extra={
                    "client": client[0] if client else None,
                    "method": method,
                    "route": route,
                    "status": answer.status,
                    "ms": round(elapsed * 1000, 2),
                    **({"model": model} if model is not None else {}),
                    **answer.fields(),
                },
            )

    def _inference_model(self, scope: Scope) -> str | None:
        """The known model an inference request (v1 or v2) names, else None (a bounded label)."""
        if scope["method"] != "POST":
            return None
        found = INFERENCE_PATH.match(scope["path"])
        if found is None or found["model"] not in self.metrics.models:
            return None
        return found["model"]


# Inference requests counted per model: v1's answers and v2's infer.
INFERENCE_PATH = re.compile(
    r"/v[12]/models/(?P<model>[^/]+)/(?:versions/[^/]+/)?(?:mask|probabilities|overlay|infer)"
)
# Probes and scrapes come every few seconds: their access lines are debug, not info.
PROBES = frozenset({"/healthz", "/readyz", "/metrics"})
# A 4xx's problem document is read up to here for its type and detail.
PROBLEM_BYTES = 16 * 1024


class _Answer:
    """What the access line says of the answer: status, sizes, threshold, a 4xx's problem."""

    def __init__(self) -> None:
        self.status: int | None = None
        self.bytes_in = 0
        self.bytes_out = 0
        self.headers: dict[bytes, bytes] = {}
        self.problem: bytes | None = None

    def note(self, message: Message) -> None:
        """Take in one message the app sends."""
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = dict(message.get("headers", []))
            problem = self.headers.get(b"content-type", b"").startswith(b"application/problem")
            if problem and 400 <= self.status < 500:
                self.problem = b""
        elif message["type"] == "http.response.body":
            body = message.get("body", b"")
            self.bytes_out += len(body)
            if self.problem is not None and len(self.problem) < PROBLEM_BYTES:
                self.problem += body[: PROBLEM_BYTES - len(self.problem)]

    def fields(self) -> dict[str, Any]:
        """The access line's fields for the answer."""
        out: dict[str, Any] = {"bytes_in": self.bytes_in, "bytes_out": self.bytes_out}
        threshold = self.headers.get(b"x-threshold")
        if threshold is not None:
            text = threshold.decode()
            try:
                out["threshold"] = float(text)
            except ValueError:  # a multi-class answer's `nucleus=0.41;debris=0.63`
                out["threshold"] = text
            out["threshold_source"] = self.headers.get(b"x-threshold-source", b"").decode()
        if self.problem:
            try:
                problem = json.loads(self.problem)
                out["problem_type"] = problem.get("type")
                out["problem_detail"] = problem.get("detail")
            except (ValueError, AttributeError):
                pass
        return out


def _trace_headers(headers: dict[bytes, bytes]) -> dict[str, str]:
    """The W3C trace-context headers, for the request span's parent."""
    return {
        name: headers[key].decode("latin-1")
        for name, key in (("traceparent", b"traceparent"), ("tracestate", b"tracestate"))
        if key in headers
    }


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
