"""Ray's proxy answers in the service's problem shape when the answer is its own, not the app's.

Ray's HTTP proxy answers some requests itself, in plain text: 503 when `max_queued_requests` is
reached (with `Retry-After`), 503 when no replica is running, 408 when its request timeout
passes, 404 for a route it does not know. When the replica handling a request dies, the proxy
sends nothing and its server (uvicorn) answers a plain-text 500. This middleware, installed in
the proxy with `RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=service.api.ray_proxy:middlewares`,
turns every such answer into an RFC 9457 problem, headers kept; a replica that died (no answer,
or a plain 500/502) becomes 503 `replica-failed` with `Retry-After`, since another replica, or
its replacement, can take the retry. The replicas' own answers (problems, or /readyz's JSON)
pass through untouched.
"""

from __future__ import annotations

import logging
from http import HTTPStatus

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.problems import problem_json, send_problem
from service.settings import Settings

log = logging.getLogger(__name__)

REPLICA_FAILED = (
    "the replica handling this request stopped before it answered (it died or is being "
    "replaced); retry"
)
# Plain-text statuses that mean the replica failed, not the request.
FAILED = (500, 502)


def middlewares() -> list[Middleware]:
    """The proxy middlewares Ray installs from `RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`."""
    return [Middleware(ProblemRefusals, retry_after_s=Settings().ray_retry_after_s)]


class ProblemRefusals:
    """Rewrites the proxy's own plain-text error answers, and a missing answer, as problems."""

    def __init__(self, app: ASGIApp, retry_after_s: int = 1) -> None:
        self.app = app
        self.retry_after = str(retry_after_s).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on; hold back and rewrite an error answer that is not a problem yet."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        held: Message | None = None
        started = False
        text = bytearray()

        async def relay(message: Message) -> None:
            nonlocal held, started
            if message["type"] == "http.response.start":
                started = True
                if _plain_error(message):
                    held = message
                    return
            if held is None or message["type"] != "http.response.body":
                await send(message)
                return
            text.extend(message.get("body", b""))
            if not message.get("more_body", False):
                await self._send_problem(send, held, text.decode(errors="replace"), scope["path"])

        try:
            await self.app(scope, receive, relay)
        except Exception:
            if started:
                raise
            log.exception("Ray's proxy failed on %s before answering", scope["path"])
        if not started:
            # The replica died with the request (Ray logs the actor error); uvicorn would
            # answer a plain 500.
            await self._send_problem(send, {"status": 500, "headers": []}, "", scope["path"])

    async def _send_problem(self, send: Send, start: Message, detail: str, path: str) -> None:
        status = start["status"]
        kept = [
            (name, value)
            for name, value in start.get("headers", [])
            if name.lower() not in (b"content-type", b"content-length")
        ]
        if status in FAILED:
            status, slug, title, detail = (
                503,
                "replica-failed",
                "Service unavailable",
                REPLICA_FAILED,
            )
            if not any(name.lower() == b"retry-after" for name, _ in kept):
                kept.append((b"retry-after", self.retry_after))
        else:
            slug, title = _kind(status, kept)
        body = problem_json(status, title, detail.strip() or title, slug=slug, instance=path)
        await send_problem(send, status, body, kept)


def _plain_error(start: Message) -> bool:
    headers = {name.lower(): value for name, value in start.get("headers", [])}
    content_type = headers.get(b"content-type", b"").decode(errors="replace")
    # Ray's own answers are plain text (or untyped); the app's are problems or, from
    # /readyz, JSON, and stay as they are.
    plain = content_type == "" or content_type.startswith("text/plain")
    return start["status"] >= 400 and plain


def _kind(status: int, headers: list[tuple[bytes, bytes]]) -> tuple[str, str]:
    """The problem type slug and title of one of the proxy's own refusals."""
    if status == 503:
        if any(name.lower() == b"retry-after" for name, _ in headers):
            return "overloaded", "Service overloaded"  # max_queued_requests reached
        return "unavailable", "Service unavailable"  # no replica running
    if status == 429:
        return "too-many-requests", "Too many requests"
    if status == 408:
        return "request-timeout", "Request timeout"  # the proxy's request_timeout_s
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    return phrase.lower().replace(" ", "-"), phrase
