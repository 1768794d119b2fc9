"""Ray's proxy refusals in the service's problem shape (the proxy middleware, without Ray).

The middleware wraps a real Starlette app that answers as Ray's proxy does (plain text 503 with
or without Retry-After) and as the service does (problems, /readyz JSON).
"""

from __future__ import annotations

from fastapi.testclient import TestClient
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from service.api.problems import problem_response
from service.api.ray_proxy import middlewares
from tests.helpers import PROBLEM, assert_problem

BACKPRESSURE = "Request dropped due to backpressure (num_queued_requests=1, max_queued_requests=1)."


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

    routes = [
        Route("/busy", backpressure),
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
