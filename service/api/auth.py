"""The API key: checked from the request head, before a mutating request's body is read.

A route dependency runs only after FastAPI has parsed (and spooled to disk) the whole body, so an
unauthenticated client could still make the server take in a 512 MiB upload before its 401.
`KeyBeforeBody` answers the 401 from the head alone; the dependency stays as a second check and
as the routes' OpenAPI documentation.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

from fastapi.routing import APIRoute
from starlette.datastructures import Headers
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.problems import ProblemError, problem_response
from service.settings import Settings


def key_matches(settings: Settings, authorization: str | None) -> bool:
    """Whether `Authorization` carries UNET_API_KEY as a bearer token (always, when none is set)."""
    expected = settings.api_key
    if expected is None:
        return True
    scheme, _, token = (authorization or "").partition(" ")
    # compare_digest takes the same time whatever the first mismatching byte.
    return scheme.lower() == "bearer" and secrets.compare_digest(
        token.strip().encode(), expected.get_secret_value().encode()
    )


def unauthorized() -> ProblemError:
    """The 401 problem of a mutating request without the right key."""
    return ProblemError(
        401,
        "Unauthorized",
        "this endpoint changes state; send 'Authorization: Bearer <UNET_API_KEY>'",
        slug="unauthorized",
        headers={"WWW-Authenticate": "Bearer"},
    )


class KeyBeforeBody:
    """ASGI middleware: the 401 of a route that needs the key, sent before its body is read.

    Of `routes`, those that declare the `needs_key` dependency need the key.
    """

    def __init__(
        self, app: ASGIApp, routes: Sequence[BaseRoute], settings: Settings, needs_key: object
    ) -> None:
        self.app = app
        self.settings = settings
        self.keyed = [
            route
            for route in routes
            if isinstance(route, APIRoute)
            and any(dependency.dependency is needs_key for dependency in route.dependencies)
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Refuse a keyed route's request without the key; pass everything else on."""
        if (
            scope["type"] == "http"
            and self.settings.api_key is not None
            and self._keyed(scope)
            and not key_matches(self.settings, Headers(scope=scope).get("authorization"))
        ):
            error = unauthorized()
            response = problem_response(
                error.status,
                error.title,
                error.detail,
                type=error.type,
                instance=scope["path"],
                headers={**error.headers, "Connection": "close"},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _keyed(self, scope: Scope) -> bool:
        return any(route.matches(scope)[0] == Match.FULL for route in self.keyed)
