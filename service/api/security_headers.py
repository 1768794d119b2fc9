"""Security headers on every answer: a Content-Security-Policy, nosniff, no framing.

The explorer loads only its own scripts, styles and the API, so its policy allows nothing else.
Swagger UI's page starts it with one inline script, allowed by its SHA-256 hash (never
'unsafe-inline' for scripts); ReDoc injects its styles at run time, so /redoc alone allows inline
styles. A page that needs more than the base policy sets its own header; this middleware fills
in the rest on every answer, JSON and problems included.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Everything from this service only; `blob:` for the explorer's downloads, `data:` for the docs'
# inline icons. frame-ancestors 'none': no page, not even our own, may frame these answers.
BASE_POLICY = {
    "default-src": "'self'",
    "img-src": "'self' data: blob:",
    "object-src": "'none'",
    "base-uri": "'none'",
    "form-action": "'self'",
    "frame-ancestors": "'none'",
}
HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",  # frame-ancestors for browsers that predate CSP level 2
    "referrer-policy": "same-origin",
}
CSP = "content-security-policy"
# Inline scripts (no src attribute) in HTML this service builds itself from known templates.
INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>(.*?)</script>", re.DOTALL | re.I)


def policy(**directives: str) -> str:
    """BASE_POLICY with `directives` (underscores for dashes) replacing or adding entries."""
    merged = BASE_POLICY | {name.replace("_", "-"): value for name, value in directives.items()}
    return "; ".join(f"{name} {value}" for name, value in merged.items())


def script_hashes(html: str) -> list[str]:
    """CSP source expressions (`'sha256-...'`) for each inline script of `html`."""
    return [_sha256(script) for script in INLINE_SCRIPT.findall(html)]


def _sha256(text: str) -> str:
    digest = hashlib.sha256(text.encode()).digest()
    return f"'sha256-{base64.b64encode(digest).decode()}'"


def page_policy(html: str, extra_scripts: Iterable[str] = (), **directives: str) -> str:
    """The policy of a page whose inline scripts are allowed by hash and nothing else."""
    sources = " ".join(["'self'", *script_hashes(html), *extra_scripts])
    return policy(script_src=sources, **directives)


class SecurityHeaders:
    """ASGI middleware: the base CSP (unless the answer has its own), nosniff, no framing."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.base = policy()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on and add the headers to its answer."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in HEADERS.items():
                    headers.setdefault(name, value)
                headers.setdefault(CSP, self.base)
            await send(message)

        await self.app(scope, receive, send_with_headers)
