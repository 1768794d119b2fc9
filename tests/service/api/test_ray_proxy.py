"""Ray's proxy refusals in the service's problem shape (the proxy middleware, without Ray).

The middleware wraps a real Starlette app that answers as Ray's proxy does (plain text 503 with
or without Retry-After, 408, nothing at all when the replica died, which its server turns into a
plain 500) and as the service does (problems, /readyz JSON).
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from service.api.problems import problem_response
from service.api.ray_proxy import middlewares
from tests.helpers import PROBLEM, assert_problem

BACKPRESSURE = "Request dropped due to backpressure (num_queued_requests=1, max_queued_requests=1)."


class Silent:
    """Answers nothing, as Ray 2.60's proxy does when the replica died (a RayActorError)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Return without a response."""


class Failing:
    """Fails before answering."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Raise."""
        raise RuntimeError("the proxy's handle broke")


def ray_like_app() -> Starlette:
    """Answers the way Ray's proxy and the service's replicas answer."""

    def backpressure(_: Request) -> Response:
        return Response(BACKPRESSURE, status_code=503, headers={"Retry-After": "1"})

    def unavailable(_: Request) -> Response:
        return PlainTextResponse("Deployment unavailable.", status_code=503)

    def engine_busy(_: Request) -> Response:
        return problem_response(
            503, "Service overloaded", "queue full", headers={"Retry-After": "2"}
        )

    def starting(_: Request) -> Response:
        return JSONResponse({"status": "starting"}, status_code=503, headers={"Retry-After": "1"})

    def internal_error(_: Request) -> Response:
        return PlainTextResponse("Internal Server Error", status_code=500)

    def bad_gateway(_: Request) -> Response:
        return PlainTextResponse("Bad Gateway", status_code=502)

    def timed_out(_: Request) -> Response:
        return PlainTextResponse("Request abc timed out after 5.0s.", status_code=408)

    routes = [
        Route("/busy", backpressure),
        Route("/crash", internal_error),
        Route("/gateway", bad_gateway),
        Route("/slow", timed_out),
        Route("/died", Silent()),
        Route("/broken", Failing()),
        Route("/down", unavailable),
        Route("/engine", engine_busy),
        Route("/readyz", starting),
        Route("/ok", lambda _: PlainTextResponse("fine")),
    ]
    return Starlette(routes=routes, middleware=middlewares())


def test_ray_backpressure_becomes_an_overloaded_problem_with_its_retry_after() -> None:
    answer = TestClient(ray_like_app()).get("/busy")
    body = assert_problem(answer, 503)
    assert answer.headers["retry-after"] == "1"
    assert body["type"].endswith("/overloaded") and body["title"] == "Service overloaded"
    assert body["detail"] == BACKPRESSURE and body["instance"] == "/busy"
    assert int(answer.headers["content-length"]) == len(answer.content)


def test_no_replica_becomes_an_unavailable_problem() -> None:
    answer = TestClient(ray_like_app()).get("/down")
    body = assert_problem(answer, 503)
    assert body["type"].endswith("/unavailable") and "retry-after" not in answer.headers


def test_the_services_own_answers_pass_untouched() -> None:
    client = TestClient(ray_like_app())
    engine = client.get("/engine")
    assert engine.headers["content-type"] == PROBLEM and engine.json()["detail"] == "queue full"
    assert engine.headers["retry-after"] == "2"
    readyz = client.get("/readyz")
    assert readyz.json() == {"status": "starting"} and readyz.status_code == 503
    assert client.get("/ok").text == "fine"


def test_a_replica_that_died_mid_request_becomes_a_503_problem_with_retry_after() -> None:
    client = TestClient(ray_like_app(), raise_server_exceptions=False)
    for path in ("/died", "/crash", "/gateway", "/broken"):
        answer = client.get(path)
        body = assert_problem(answer, 503)
        assert answer.headers["retry-after"] == "1", path
        assert body["type"].endswith("/replica-failed") and "retry" in body["detail"], path
        assert body["instance"] == path
        assert int(answer.headers["content-length"]) == len(answer.content)


def test_the_proxys_request_timeout_becomes_a_408_problem() -> None:
    answer = TestClient(ray_like_app()).get("/slow")
    body = assert_problem(answer, 408)
    assert body["type"].endswith("/request-timeout") and "timed out" in body["detail"]


def test_the_retry_after_of_a_failed_replica_is_the_ray_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("UNET_RAY_RETRY_AFTER_S", "4")
    app = Starlette(routes=[Route("/died", Silent())], middleware=middlewares())
    assert TestClient(app).get("/died").headers["retry-after"] == "4"
