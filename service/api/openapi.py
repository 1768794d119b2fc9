"""The OpenAPI document as client generators read it: operation ids, tags, files and bytes."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute

# The order is the README's: operations first, then models, inference, calibration, thresholds.
TAGS = [
    {"name": "health", "description": "Liveness, readiness and Prometheus metrics."},
    {"name": "models", "description": "The served models and their active thresholds."},
    {"name": "inference", "description": "Masks, probability maps and overlays of an image."},
    {"name": "calibrations", "description": "Thresholds read off a calibration set's ROC curve."},
    {"name": "thresholds", "description": "The active threshold, and overriding it by hand."},
    {
        "name": "oip",
        "description": "Open Inference Protocol v2 (KServe, Triton): health, metadata and "
        'inference with JSON or binary tensors; errors are `{"error": ...}`.',
    },
]
BINARY = {"type": "string", "format": "binary"}
# The one binary media type that generators without a table of media types turn into bytes.
OCTET_STREAM = "application/octet-stream"


def operation_id(route: APIRoute) -> str:
    """`{tag}-{route name}` (`inference-mask`): short, stable and readable as a method name.

    Give each route a short `name=` (`list`, `get`, `set`, ...): the function's name is the
    fallback, with `_` as `-`. Body schemas are named after the id too (`Body_inference-mask`).
    """
    name = route.name.replace("_", "-")
    return f"{route.tags[0]}-{name}" if route.tags else name


def binary_content(*media_types: str) -> dict[str, Any]:
    """A `responses=` entry's `content` for a body of raw bytes in one of `media_types`."""
    return {"content": {media_type: {"schema": dict(BINARY)} for media_type in media_types}}


def describe_binary(schema: dict[str, Any]) -> dict[str, Any]:
    """Make an OpenAPI schema describe uploads as files and binary answers as bytes.

    OpenAPI 3.1 names an upload by `contentMediaType` alone, which generators such as
    openapi-python-client read as a plain string and send as a form field; `format: binary`
    next to it stays valid 3.1 and makes them send a file. They also skip responses of media
    types they have no table entry for (`image/png`, `application/x-npy`), so each binary
    response lists application/octet-stream first: the same bytes, as a generator can type them.
    """
    for component in schema.get("components", {}).get("schemas", {}).values():
        for field in component.get("properties", {}).values():
            if field.get("type") == "string" and "contentMediaType" in field:
                field.setdefault("format", "binary")
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            if not isinstance(operation, dict):
                continue
            for response in operation.get("responses", {}).values():
                content = response.get("content")
                if content and OCTET_STREAM not in content and _has_binary(content):
                    response["content"] = {OCTET_STREAM: {"schema": dict(BINARY)}, **content}
    return schema


def _has_binary(content: dict[str, Any]) -> bool:
    return any(media.get("schema") == BINARY for media in content.values())


def install_openapi(app: FastAPI) -> None:
    """Serve `app`'s OpenAPI document with uploads as files and binary answers as bytes."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        return describe_binary(generate())  # cheap and idempotent, so no cache of its own

    app.openapi = openapi  # type: ignore[method-assign]
