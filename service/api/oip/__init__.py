"""Open Inference Protocol v2 (KServe's predict API v2, Triton's HTTP API) beside v1."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request, Response

from service.api.oip.errors import ErrorBodies, OipError, is_oip
from service.api.oip.routes import router
from service.api.oip.schemas import InferenceRequest, InferenceResponse

OCTET_STREAM = "application/octet-stream"


def install_oip(app: FastAPI) -> None:
    """Serve `/v2`, answer its errors as the protocol says, and document it.

    Call it after the service's own middleware: its error rewriting must wrap theirs.
    """
    app.include_router(router)
    app.add_middleware(ErrorBodies)

    async def answer(_: Request, error: Exception) -> Response:
        assert isinstance(error, OipError)
        return error.response()

    app.add_exception_handler(OipError, answer)
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        return document_oip(generate())

    app.openapi = openapi  # type: ignore[method-assign]


def document_oip(schema: dict[str, Any]) -> dict[str, Any]:
    """The request body's schema, no 422 (validation errors are 400s here), bytes listed first."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for document in (InferenceRequest, InferenceResponse):  # the infer body is read by hand
        if document.__name__ not in components:
            own = document.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(own.pop("$defs", {}))
            components[document.__name__] = own
    for path, item in schema.get("paths", {}).items():
        if not is_oip(path):
            continue
        for operation in item.values():
            responses = operation.get("responses", {})
            responses.pop("422", None)
            for response in responses.values():
                content = response.get("content", {})
                if OCTET_STREAM in content:  # generators type the first binary media type
                    response["content"] = {OCTET_STREAM: content.pop(OCTET_STREAM), **content}
    return schema
