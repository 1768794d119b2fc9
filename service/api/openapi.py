"""The OpenAPI document as client generators read it: operation ids and tags."""

from __future__ import annotations

from fastapi.routing import APIRoute

# The order is the README's: operations first, then models, inference, calibration, thresholds.
TAGS = [
    {"name": "health", "description": "Liveness, readiness and Prometheus metrics."},
    {"name": "models", "description": "The served models and their active thresholds."},
    {"name": "inference", "description": "Masks, probability maps and overlays of an image."},
    {"name": "calibrations", "description": "Thresholds read off a calibration set's ROC curve."},
    {"name": "thresholds", "description": "The active threshold, and overriding it by hand."},
]


def operation_id(route: APIRoute) -> str:
    """`{tag}-{route name}` (`inference-mask`): short, stable and readable as a method name.

    Give each route a short `name=` (`list`, `get`, `set`, ...): the function's name is the
    fallback, with `_` as `-`. Body schemas are named after the id too (`Body_inference-mask`).
    """
    name = route.name.replace("_", "-")
    return f"{route.tags[0]}-{name}" if route.tags else name
