"""Errors on `/v2` as the Open Inference Protocol says: `{"error": "..."}` with a 4xx or 5xx.

The routes raise `OipError`; a problem raised below them (a domain error's, a decoder's) becomes
one with `from_problem`; and `ErrorBodies` rewrites the problem documents that the middleware in
front of every route sends (413 and 408 while the body streams, 403 cross-origin, 500) into the
protocol's shape, so no `/v2` answer is problem JSON.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.errors import DOMAIN_ERRORS, DomainError, problem_for
from service.api.problems import MEDIA_TYPE, ProblemError

PREFIX = "/v2"


class OipError(Exception):
    """Answer a `/v2` request with `{"error": message}` and `status`."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})

    def response(self) -> JSONResponse:
        """The JSON answer."""
        return JSONResponse({"error": self.message}, self.status, headers=self.headers)


def status_for(problem_status: int) -> int:
    """The `/v2` status of a problem's: the protocol names a bad request 400, not 422."""
    return 400 if problem_status == 422 else problem_status


def from_problem(problem: ProblemError) -> OipError:
    """The `/v2` answer to what v1 answers with `problem`."""
    return OipError(status_for(problem.status), problem.detail or problem.title, problem.headers)


def from_error(error: ProblemError | DomainError) -> OipError:
    """The `/v2` answer to a problem or a domain error (overload: 503 with Retry-After)."""
    if isinstance(error, DOMAIN_ERRORS):
        return from_problem(problem_for(error))
    assert isinstance(error, ProblemError)
    return from_problem(error)


def is_oip(path: str) -> bool:
    """Whether `path` is one of the protocol's."""
    return path == PREFIX or path.startswith(PREFIX + "/")


class ErrorBodies:
    """ASGI middleware: a problem document answered on `/v2` becomes `{"error": detail}`."""

    def __init__(self, app: ASGIApp) -> None:
        """Wrap `app`."""
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on, rewriting a `/v2` problem answer on its way out."""
        if scope["type"] != "http" or not is_oip(scope["path"]):
            await self.app(scope, receive, send)
            return
        held: Message | None = None
        body: list[bytes] = []

        async def rewriting_send(message: Message) -> None:
            nonlocal held
            if message["type"] == "http.response.start":
                headers = dict(message.get("headers", []))
                if headers.get(b"content-type", b"").startswith(MEDIA_TYPE.encode()):
                    held = message  # a problem: wait for its body
                    return
            if held is None:
                await send(message)
                return
            body.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            await _send_error(send, held, b"".join(body))

        await self.app(scope, receive, rewriting_send)


async def _send_error(send: Send, start: Message, problem: bytes) -> None:
    try:
        document = json.loads(problem)
        message = str(document.get("detail") or document.get("title") or "error")
    except (ValueError, AttributeError):
        message = problem.decode(errors="replace")
    body = json.dumps({"error": message}).encode()
    kept = [
        (name, value)
        for name, value in start.get("headers", [])
        if name not in (b"content-type", b"content-length")
    ]
    headers = [
        *kept,
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    status = status_for(int(start["status"]))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
