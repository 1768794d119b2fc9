"""RFC 9457 problem details: every error the service returns, in one shape."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

MEDIA_TYPE = "application/problem+json"
TYPE_BASE = "https://unet-service.dev/problems/"
LOCATIONS = {"query": "query parameter", "path": "path parameter", "header": "header"}
LOCATIONS_FORM = ("multipart/form-data", "application/x-www-form-urlencoded")


class FieldError(BaseModel):
    """One invalid part of a request."""

    location: str = Field(description="Where it is: query, path, header, cookie or body.")
    name: str = Field(description="The parameter or field, dotted for nested body fields.")
    message: str = Field(description="What is wrong with it.")


class Problem(BaseModel):
    """An RFC 9457 problem details object (`application/problem+json`)."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "type": "https://unet-service.dev/problems/unknown-model",
                    "title": "Unknown model",
                    "status": 404,
                    "detail": "no model named 'unet-tanh'; this service has unet-sigmoid",
                    "instance": "/v1/models/unet-tanh/mask",
                }
            ]
        },
    )

    type: str = Field(default="about:blank", description="A URI naming the kind of problem.")
    title: str = Field(description="A short summary of the kind of problem.")
    status: int = Field(description="The HTTP status code.")
    detail: str | None = Field(
        default=None, description="What went wrong here, for a person to act on."
    )
    instance: str | None = Field(
        default=None, description="The request path the problem occurred at."
    )
    errors: list[FieldError] | None = Field(
        default=None, description="For invalid requests: each invalid parameter and why."
    )


class ProblemError(Exception):
    """Raise to answer with a problem; the handler turns it into `application/problem+json`."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str | None = None,
        *,
        slug: str | None = None,
        type: str | None = None,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        """`slug` names the problem type under TYPE_BASE; `type` gives a full URI instead."""
        super().__init__(detail or title)
        self.status = status
        self.title = title
        self.detail = detail
        self.slug = slug
        self.type = type or (TYPE_BASE + slug if slug else "about:blank")
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries documenting `statuses` as problem details."""
    # FastAPI files `model` under application/json; `document_problems` moves it to MEDIA_TYPE.
    return {
        status: {"model": Problem, "content": {MEDIA_TYPE: {}}, "description": _phrase(status)}
        for status in statuses
    }


def document_problems(schema: dict[str, Any]) -> dict[str, Any]:
    """Make an OpenAPI schema say what the handlers send: every error as `Problem`."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    if "Problem" not in components:
        own = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(own.pop("$defs", {}))
        components["Problem"] = own
    problem = {"schema": {"$ref": "#/components/schemas/Problem"}}
    for operation in _operations(schema):
        for status, response in operation.get("responses", {}).items():
            content = response.get("content", {})
            if MEDIA_TYPE in content:
                content.pop("application/json", None)
                content[MEDIA_TYPE] = problem
            elif status == "422":  # FastAPI's own HTTPValidationError, which is never sent
                response["content"] = {MEDIA_TYPE: problem}
    for unused in ("HTTPValidationError", "ValidationError"):  # in this order: one uses the other
        others = {name: c for name, c in components.items() if name != unused}
        if f'"#/components/schemas/{unused}"' not in json.dumps([schema.get("paths"), others]):
            components.pop(unused, None)
    return schema


def _operations(schema: dict[str, Any]) -> list[dict[str, Any]]:
    # A path item also holds `summary`, `parameters` and the like next to its operations.
    items = [item for path in schema.get("paths", {}).values() for item in path.values()]
    return [item for item in items if isinstance(item, dict) and "responses" in item]


def problem_body(
    status: int,
    title: str | None = None,
    detail: str | None = None,
    *,
    type: str = "about:blank",
    slug: str | None = None,
    instance: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The one builder of a problem details object; every error answer's body comes from here.

    `title` defaults to the status's reason phrase; `slug` names the type under TYPE_BASE
    (instead of `type`); `extra` members come first, the standard ones after them.
    """
    body: dict[str, Any] = {**jsonable_encoder(dict(extra or {}))}
    body.update(type=TYPE_BASE + slug if slug else type, title=title or _phrase(status))
    body["status"] = status
    if detail is not None:
        body["detail"] = detail
    if instance is not None:
        body["instance"] = instance
    return body


def problem_json(
    status: int,
    title: str | None = None,
    detail: str | None = None,
    *,
    slug: str | None = None,
    instance: str | None = None,
) -> bytes:
    """`problem_body(...)` encoded as `problem_response` sends it, for answers sent as raw bytes."""
    body = problem_body(status, title, detail, slug=slug, instance=instance)
    return bytes(JSONResponse(body).body)


def problem_response(
    status: int,
    title: str | None = None,
    detail: str | None = None,
    *,
    type: str = "about:blank",
    slug: str | None = None,
    instance: str | None = None,
    headers: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> JSONResponse:
    """A problem details response; `title` defaults to the status's reason phrase."""
    body = problem_body(status, title, detail, type=type, slug=slug, instance=instance, extra=extra)
    return JSONResponse(
        body, status_code=status, headers=dict(headers or {}), media_type=MEDIA_TYPE
    )


async def send_problem(
    send: Send, status: int, body: bytes, headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    """Send a complete problem answer (`body` from `problem_json`) on a raw ASGI `send`."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                *headers,
                (b"content-type", MEDIA_TYPE.encode()),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def field_errors(errors: Sequence[Any]) -> list[FieldError]:
    """Pydantic's validation errors as (location, name, message), without echoing the input."""
    found = []
    for error in errors:
        loc = [str(part) for part in error.get("loc", ())]
        where, message = (loc[0] if loc else "body"), str(error.get("msg", ""))
        if error.get("type") == "json_invalid":
            # The location is a character offset, not a field: say so in the message instead.
            reason = (error.get("ctx") or {}).get("error", "")
            offset = f" at character {loc[1]}" if len(loc) > 1 else ""
            found.append(
                FieldError(location=where, name="", message=f"invalid JSON{offset}: {reason}")
            )
            continue
        found.append(FieldError(location=where, name=".".join(loc[1:]), message=message))
    return found


def describe(error: FieldError, form: bool = False) -> str:
    """One field error as a sentence fragment, e.g. "query parameter 'threshold': ..."."""
    if error.location == "body":
        if not error.name:
            return f"request body: {error.message}"
        kind = "form field" if form else "body field"
        return f"{kind} '{error.name}': {error.message}"
    kind = LOCATIONS.get(error.location, error.location)
    return f"{kind} '{error.name}': {error.message}"


async def answer_problem(request: Request, error: Exception) -> JSONResponse:
    """The problem+json response of `error` (a ProblemError); a 5xx is logged."""
    assert isinstance(error, ProblemError)
    if error.status >= 500:
        log.warning("%s %s: %d %s", request.method, request.url.path, error.status, error)
    return problem_response(
        error.status,
        error.title,
        error.detail,
        type=error.type,
        instance=request.url.path,
        headers=error.headers,
        extra=error.extra,
    )


async def _invalid(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    form = request.headers.get("content-type", "").startswith(LOCATIONS_FORM)
    errors = field_errors(error.errors())
    return problem_response(
        422,
        "Invalid request",
        "; ".join(describe(e, form) for e in errors) or "the request is invalid",
        slug="invalid-request",
        instance=request.url.path,
        extra={"errors": [e.model_dump() for e in errors]},
    )


async def _http(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, HTTPException)
    status = error.status_code
    detail: str | None = error.detail
    extra: dict[str, Any] = {}
    if not isinstance(detail, str):
        # FastAPI allows any JSON as an HTTPException's detail; RFC 9457 wants a string there.
        extra["context"], detail = detail, None
    if detail == _phrase(status):
        detail = _default_detail(request, status, error.headers or {})
    return problem_response(
        status,
        _phrase(status),
        detail,
        instance=request.url.path,
        headers=error.headers,
        extra=extra,
    )


def _default_detail(request: Request, status: int, headers: Mapping[str, str]) -> str | None:
    where = f"{request.method} {request.url.path}"
    if status == 404:
        return f"there is nothing at {where}; the API is described at /docs"
    if status == 405:
        allowed = headers.get("Allow") or headers.get("allow")
        return f"{where} is not allowed" + (f"; this path allows {allowed}" if allowed else "")
    return None


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


class AnswerUnstarted:
    """ASGI middleware: when the app raises `catches` before its answer started, answer with
    `answer(scope)`; once the headers are out, all that is left is to let the error through."""

    catches: tuple[type[BaseException], ...] = (Exception,)

    def __init__(self, app: ASGIApp) -> None:
        """Wrap `app`."""
        self.app = app

    def answer(self, scope: Scope) -> ASGIApp:
        """The answer to send instead of the failed one."""
        raise NotImplementedError

    def noted(self, scope: Scope) -> None:
        """Called in the `except` block, before anything is sent: e.g. to log the error."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on; on a caught exception before the response started, answer."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except self.catches:
            self.noted(scope)
            if started:
                raise  # headers are out; all that is left is to let the server drop the connection
            await self.answer(scope)(scope, receive, send)


class CatchUnexpected(AnswerUnstarted):
    """ASGI middleware: an unhandled exception becomes a logged 500 problem."""

    # Not an `Exception` handler: Starlette answers with it but then re-raises, so every bug would
    # be logged twice and test clients would raise instead of showing what a client gets.

    def noted(self, scope: Scope) -> None:
        """Log the exception being handled."""
        log.exception("internal error on %s %s", scope.get("method"), scope.get("path"))

    def answer(self, scope: Scope) -> ASGIApp:
        """A 500 problem."""
        return problem_response(
            500,
            "Internal Server Error",
            "internal error; this is a bug in the service and it has been logged",
            instance=scope.get("path"),
        )


def install_problem_handlers(app: FastAPI) -> None:
    """Answer every error of `app` with a problem details object."""
    app.add_exception_handler(ProblemError, answer_problem)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(HTTPException, _http)
    app.add_middleware(CatchUnexpected)
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_problems(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
