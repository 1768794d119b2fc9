"""Operations: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from service.api.schemas import Liveness, Readiness
from service.ops.metrics import Metrics

router = APIRouter(tags=["health"])

STARTING = {"model": Readiness, "description": "Models are still loading or warming up"}


@router.get("/healthz", name="live", summary="Liveness: 200 while the process serves")
def healthz() -> Liveness:
    """Liveness probe."""
    return Liveness(status="ok")


@router.get(
    "/readyz",
    name="ready",
    summary="Readiness: 200 once every loadable model is warm, else 503",
    response_model=Readiness,
    responses={503: STARTING},
)
def readyz(request: Request) -> JSONResponse:
    """Readiness probe: ready once every loadable model is warm; names the unavailable ones."""
    services = getattr(request.app.state, "services", None)
    failed = services.registry.failures() if services is not None else {}
    if services is None or not services.engine.ready:
        starting = {"status": "starting"} | ({"unavailable": failed} if failed else {})
        return JSONResponse(starting, status_code=503, headers={"Retry-After": "1"})
    # The rest serve: a model that failed to load or warm up is reported, not a reason to
    # stay unready.
    ready = {
        "status": "ready",
        "models": services.registry.names(),
        # The store's own word: writable, read-only or failing (inference goes on regardless).
        "state": services.store.state(),
    }
    return JSONResponse(ready | ({"unavailable": failed} if failed else {}))


@router.get(
    "/metrics",
    name="metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={
        200: {
            "content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}},
            "description": "Text exposition",
        }
    },
)
def metrics(request: Request) -> Response:
    """Requests, latencies, batch sizes, queue depth, calibrations and active thresholds."""
    registry: Metrics = request.app.state.metrics
    return Response(registry.render(), media_type=CONTENT_TYPE_LATEST)
