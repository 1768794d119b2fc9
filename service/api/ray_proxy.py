"""Ray's proxy answers in the service's problem shape when it refuses a request itself.

Ray's HTTP proxy refuses requests before any replica sees them: 503 when `max_queued_requests`
is reached (with `Retry-After`), 503 when no replica is running. Its body is plain text. This
middleware, installed in the proxy with `RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=
service.api.ray_proxy:middlewares`, turns those answers into RFC 9457 problems, headers kept; the
replicas' own answers (problems, or /readyz's JSON) pass through untouched.
"""

from __future__ import annotations

import json

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.problems import MEDIA_TYPE, TYPE_BASE

# (status, has Retry-After) -> (title, problem type slug)
REFUSALS = {
    (503, True): ("Service overloaded", "overloaded"),  # max_queued_requests reached
    (503, False): ("Service unavailable", "unavailable"),  # no replica running
    (429, True): ("Too many requests", "too-many-requests"),
    (429, False): ("Too many requests", "too-many-requests"),
}


def middlewares() -> list[Middleware]:
    """The proxy middlewares Ray installs from `RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`."""
    return [Middleware(ProblemRefusals)]


class ProblemRefusals:
    """Rewrites the proxy's plain-text 429 and 503 answers as problem details."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on; hold back and rewrite a refusal that is not a problem yet."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        held: Message | None = None
        text = bytearray()

        async def relay(message: Message) -> None:
            nonlocal held
            if message["type"] == "http.response.start" and _plain_refusal(message):
                held = message
                return
            if held is None or message["type"] != "http.response.body":
                await send(message)
                return
            text.extend(message.get("body", b""))
            if not message.get("more_body", False):
                await _send_problem(send, held, text.decode(errors="replace"), scope["path"])

        await self.app(scope, receive, relay)


def _plain_refusal(start: Message) -> bool:
    headers = {name.lower(): value for name, value in start.get("headers", [])}
    content_type = headers.get(b"content-type", b"").decode(errors="replace")
    # Ray's own refusals are plain text (or untyped); the app's are problems or, from
    # /readyz, JSON, and stay as they are.
    plain = content_type == "" or content_type.startswith("text/plain")
    return start["status"] in (429, 503) and plain


async def _send_problem(send: Send, start: Message, detail: str, path: str) -> None:
    status = start["status"]
    retry_after = any(name.lower() == b"retry-after" for name, _ in start.get("headers", []))
    title, slug = REFUSALS[status, retry_after]
    body = json.dumps(
        {
            "type": TYPE_BASE + slug,
            "title": title,
            "status": status,
            "detail": detail.strip() or title,
            "instance": path,
        }
    ).encode()
    kept = [
        (name, value)
        for name, value in start.get("headers", [])
        if name.lower() not in (b"content-type", b"content-length")
    ]
    headers = [
        *kept,
        (b"content-type", MEDIA_TYPE.encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
