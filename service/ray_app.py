"""The service as a Ray Serve application: `serve run deploy/ray/serve.yaml`.

Each replica runs the very app `create_app` builds, lifespan included (Ray Serve runs an ingress
app's ASGI lifespan in the replica), so routes, problems, auth and the inference engine are the
service's own. Ray adds placement (CPUs and GPUs per replica), replica count or autoscaling,
restarts of unhealthy replicas, and a bounded queue in front of the replicas.

Inference goes through those routes, so through the same segment use case as the plain service
(`service.usecases.segment`). The engine keeps its own batching: it batches across the requests
of one replica and tiles large images, which `@serve.batch` would only duplicate.
`max_ongoing_requests` hands a replica enough requests at once for that batching to work;
`max_queued_requests` bounds what waits in front of the replicas, so that an overload answers 503
with `Retry-After` instead of queueing for ever.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve import Application
from ray.serve.config import AutoscalingConfig, BackpressureConfig
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.app import create_app
from service.inference.engine import InferenceEngine
from service.settings import Settings

# Ray fails a health check that takes longer than its timeout (30 s by default); stay below it.
READY_WAIT_S = 25.0
REPLICA_HEADER = b"x-replica"


class ReplicaHeader:
    """Names the replica that answered in an `X-Replica` header, to trace a request to its logs."""

    def __init__(self, app: ASGIApp, replica: str) -> None:
        self.app = app
        self.replica = replica.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Add the header to every HTTP answer."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def named(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", []), (REPLICA_HEADER, self.replica)]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, named)


@serve.ingress()
class UNetService:
    """One replica: the service's FastAPI app, with its settings read from this replica's env."""

    def __init__(self) -> None:
        self.settings = Settings()
        self.served: FastAPI | None = None

    def __serve_build_asgi_app__(self) -> FastAPI:
        """Ray's hook: the app this replica serves, built where it runs."""
        self.served = create_app(self.settings)
        replica = serve.get_replica_context().replica_id.unique_id
        self.served.add_middleware(ReplicaHeader, replica=replica)
        return self.served

    async def check_health(self) -> None:
        """Ray's health check: healthy once the engine has warmed up, as `/readyz` says.

        Ray checks a new replica before routing to it, so waiting for the warm-up here keeps
        requests off a replica that is still loading; an engine that never gets ready fails
        the check, and Ray replaces the replica.
        """
        engine = self._engine()
        if engine is None:
            raise RuntimeError("the service has not started (see /readyz)")
        try:
            async with asyncio.timeout(READY_WAIT_S):
                ready = await engine.wait_ready()
        except TimeoutError:
            ready = False
        if not ready:
            raise RuntimeError("the inference engine is not ready (see /readyz)")

    def _engine(self) -> InferenceEngine | None:
        """The engine of this replica's running app; None before its lifespan has started it."""
        services = getattr(self.served.state, "services", None) if self.served else None
        return None if services is None else services.engine


def deployment_options(settings: Settings) -> dict[str, Any]:
    """Ray Serve's deployment options, from the service's settings."""
    options: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": settings.ray_num_cpus, "num_gpus": settings.ray_num_gpus},
        "max_ongoing_requests": settings.ray_max_ongoing_requests,
        "max_queued_requests": settings.ray_max_queued_requests,
        "backpressure_config": BackpressureConfig(
            status_code=503, retry_after_s=settings.ray_retry_after_s
        ),
    }
    if settings.ray_max_replicas is None:
        options["num_replicas"] = settings.ray_replicas
    else:
        options["autoscaling_config"] = AutoscalingConfig(
            min_replicas=settings.ray_replicas,
            max_replicas=max(settings.ray_replicas, settings.ray_max_replicas),
            target_ongoing_requests=settings.ray_target_ongoing_requests,
        )
    return options


def build(args: dict[str, str] | None = None) -> Application:
    """The application `serve run` deploys (an application builder: `service.ray_app:build`).

    Scaling options come from the UNET_RAY_* settings of the process that builds it; each
    replica reads the service's settings from its own environment.
    """
    options = deployment_options(Settings())
    return serve.deployment(name="unet-service", **options)(UNetService).bind()
