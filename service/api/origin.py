"""Cross-site request forgery: a page on another origin may send reads, never changes.

Without an API key, any page a user of the service opens could post a form to it (a form post
needs no CORS preflight), activating a calibration or setting a threshold. Browsers say where a
request comes from, and non-browser clients (curl, scripts, generated clients) say nothing, so:

1. An `Origin` listed in UNET_ALLOWED_ORIGINS passes (this adds no CORS headers).
2. `Origin: null` (a sandboxed frame, a `file:` page, a cross-origin redirect) is refused.
3. `Sec-Fetch-Site` (every current browser sends it) decides next: `same-origin` and `none`
   pass, `same-site` (another port of the same host is a different origin) and `cross-site` do
   not. The browser judges it against the address it used, so it holds behind any proxy.
4. Otherwise an `Origin` passes only if its host and port are the request's `Host`. A proxy that
   rewrites `Host` must pass the original on (nginx: `proxy_set_header Host $host`) or the
   public origin must be listed; `X-Forwarded-Host` is never read: anyone can send it.
5. A request with neither header is not from a browser's page, and passes.
"""

from __future__ import annotations

from collections.abc import Collection
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.problems import problem_response
from service.settings import normal_origin

# Methods a browser may send from any page without changing anything (RFC 9110's safe ones).
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
PASSING_SITES = frozenset({"same-origin", "none"})
# An Origin header echoed in a problem is cut here: it is the client's text, not ours.
ECHO_CHARS = 200


def refusal(method: str, headers: Headers, allowed: Collection[str]) -> str | None:
    """Why a request must be refused as cross-origin, or None when it may go on."""
    if method.upper() in SAFE_METHODS:
        return None
    origin = headers.get("origin")
    site = headers.get("sec-fetch-site")
    if origin is not None and _listed(origin, allowed):
        return None
    if origin is not None and origin.strip().lower() == "null":
        return "the request comes from an opaque origin ('Origin: null')"
    if site is not None:
        if site.strip().lower() in PASSING_SITES:
            return None
        return f"the browser says it comes from another origin (Sec-Fetch-Site: {site[:20]})"
    if origin is None or _same_host(origin, headers.get("host")):
        return None
    return "its Origin is not this service's Host"


def _listed(origin: str, allowed: Collection[str]) -> bool:
    try:
        return normal_origin(origin) in allowed
    except ValueError:
        return False


def _same_host(origin: str, host: str | None) -> bool:
    """Whether `origin` names the host and port the client addressed (`Host`)."""
    if host is None:
        return False
    try:
        own = normal_origin(origin)
        scheme = urlsplit(own).scheme
        return own == normal_origin(f"{scheme}://{host}")
    except ValueError:
        return False


class SameOriginWrites:
    """ASGI middleware: a 403 problem for a state-changing request from another origin's page.

    Answered from the request head, before any of the body is read; see the module's rules.
    """

    def __init__(self, app: ASGIApp, allowed_origins: Collection[str]) -> None:
        self.app = app
        self.allowed = frozenset(normal_origin(origin) for origin in allowed_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Refuse a cross-origin browser's change; pass everything else on."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        why = refusal(scope["method"], headers, self.allowed)
        if why is None:
            await self.app(scope, receive, send)
            return
        origin = (headers.get("origin") or "unknown")[:ECHO_CHARS]
        response = problem_response(
            403,
            "Cross-origin request refused",
            f"a page on another origin ({origin}) may not change this service: {why}. Use the "
            "explorer at this service's own address, call the API from a program (no Origin "
            "header), or list the page's origin in UNET_ALLOWED_ORIGINS",
            slug="cross-origin-request",
            instance=scope["path"],
            # The body was never read: closing is cheaper than draining an upload.
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)
