"""FastAPI dependencies: how routes reach the running services, the model asked for, and auth."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Path, Request

from service.api.auth import key_matches, unauthorized
from service.api.problems import ProblemError
from service.container import Services
from service.inference.errors import ModelUnavailable
from service.inference.registry import ServedModel

# The dependencies are `async def` although they never await: FastAPI runs a plain `def`
# dependency in the thread pool, a hand-off that cost every request ~0.1 ms per dependency.


async def get_services(request: Request) -> Services:
    """The services created by the app's lifespan."""
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


async def get_model(
    services: ServicesDep,
    model: Annotated[str, Path(description="Model name: a checkpoint's file stem.")],
) -> ServedModel:
    """The served model named in the path; a 503 if it failed to load, a 404 if there is none."""
    served = services.registry.get(model)
    failure = services.registry.failure(model)
    if failure is not None:
        raise ModelUnavailable(model, failure)
    if served is None:
        raise ProblemError(
            404,
            "Unknown model",
            f"no model named {model!r}; this service has {', '.join(services.registry.names())}",
            slug="unknown-model",
        )
    return served


ModelDep = Annotated[ServedModel, Depends(get_model)]


async def require_api_key(
    services: ServicesDep,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> None:
    """When UNET_API_KEY is set, mutating endpoints need `Authorization: Bearer <key>`.

    `KeyBeforeBody` answers first, before the body is read; this is the second check.
    """
    if not key_matches(services.settings, authorization):
        raise unauthorized()


Authorized = Depends(require_api_key)


# Free text, not authenticated: the API key says a caller may change state, not who they are.
Actor = Annotated[
    str | None,
    Header(
        alias="X-Actor",
        max_length=200,
        description="Who makes the change (e.g. a user name), kept in the threshold's history.",
    ),
]
