"""Problem details: every error is application/problem+json with a message a person can act on."""

from __future__ import annotations

import logging
from typing import Annotated

import httpx
import pytest
from fastapi import FastAPI, File, Form, HTTPException, Query, UploadFile
from fastapi.testclient import TestClient
from pydantic import BaseModel

from service.api.problems import (
    MEDIA_TYPE,
    Problem,
    ProblemError,
    install_problem_handlers,
    problem_response,
    problem_responses,
)


class Update(BaseModel):
    value: float


def make_app() -> FastAPI:
    app = FastAPI()
    install_problem_handlers(app)

    @app.get("/items/{item}", responses=problem_responses(404, 429))
    def item(item: int, threshold: Annotated[float | None, Query()] = None) -> dict[str, int]:
        if item == 7:
            raise ProblemError(
                429,
                "Too busy",
                "the queue is full; retry in 2 s",
                slug="overloaded",
                headers={"Retry-After": "2"},
                extra={"queue_size": 64},
            )
        if item == 8:
            raise HTTPException(409, detail={"why": "conflict"})
        if item == 9:
            raise RuntimeError("secret internals")
        return {"item": item}

    @app.put("/value")
    def put(update: Update) -> Update:
        return update

    @app.post("/upload")
    def upload(image: Annotated[UploadFile, File()], n: Annotated[int, Form()]) -> dict[str, int]:
        return {"n": n}

    return app


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(make_app())


def problem(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status
    assert response.headers["content-type"] == MEDIA_TYPE
    body: dict[str, object] = response.json()
    assert body["status"] == status and body["title"] and "type" in body
    Problem.model_validate(body)
    return body


def test_problem_error_carries_type_headers_and_members(client: TestClient) -> None:
    response = client.get("/items/7")
    body = problem(response, 429)
    assert body["type"] == "https://unet-service.dev/problems/overloaded"
    assert body["detail"] == "the queue is full; retry in 2 s"
    assert body["instance"] == "/items/7" and body["queue_size"] == 64
    assert response.headers["retry-after"] == "2"


def test_query_validation_names_the_parameter(client: TestClient) -> None:
    body = problem(client.get("/items/1?threshold=high"), 422)
    assert body["detail"] == (
        "query parameter 'threshold': Input should be a valid number, "
        "unable to parse string as a number"
    )
    assert body["errors"] == [
        {
            "location": "query",
            "name": "threshold",
            "message": "Input should be a valid number, unable to parse string as a number",
        }
    ]
    assert "path parameter 'item'" in str(problem(client.get("/items/x"), 422)["detail"])


def test_body_validation(client: TestClient) -> None:
    assert "body field 'value'" in str(
        problem(client.put("/value", json={"value": "x"}), 422)["detail"]
    )
    assert problem(client.put("/value"), 422)["detail"] == "request body: Field required"
    bad_json = client.put("/value", content=b"{oops", headers={"content-type": "application/json"})
    assert "invalid JSON at character 1" in str(problem(bad_json, 422)["detail"])


def test_form_validation_lists_every_field(client: TestClient) -> None:
    detail = str(problem(client.post("/upload", data={"n": "two"}), 422)["detail"])
    assert "form field 'image': Field required" in detail
    assert "form field 'n': Input should be a valid integer" in detail


def test_unknown_route_and_wrong_method(client: TestClient) -> None:
    body = problem(client.get("/nowhere"), 404)
    assert body["title"] == "Not Found" and "/docs" in str(body["detail"])
    response = client.delete("/value")
    body = problem(response, 405)
    assert response.headers["allow"] == "PUT" and "allows PUT" in str(body["detail"])


def test_http_exception_with_structured_detail(client: TestClient) -> None:
    body = problem(client.get("/items/8"), 409)
    assert body["context"] == {"why": "conflict"} and "detail" not in body


def test_unexpected_exception_is_a_logged_500(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="service.api.problems"):
        body = problem(client.get("/items/9"), 500)
    assert "secret" not in str(body) and "bug" in str(body["detail"])
    [record] = [r for r in caplog.records if r.name == "service.api.problems"]
    assert record.exc_info is not None and "GET /items/9" in record.getMessage()


@pytest.mark.anyio
async def test_works_over_plain_asgi() -> None:
    transport = httpx.ASGITransport(app=make_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        problem(await http.get("/items/9"), 500)
        problem(await http.get("/items/7"), 429)


def test_problem_response_defaults_title_to_the_reason_phrase() -> None:
    response = problem_response(503, detail="models are loading")
    assert response.media_type == MEDIA_TYPE and response.status_code == 503
    assert b'"title":"Service Unavailable"' in response.body


def test_problem_model_appears_in_openapi(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert "Problem" in schema["components"]["schemas"]
    assert schema["components"]["schemas"]["Problem"]["examples"]
    documented = schema["paths"]["/items/{item}"]["get"]["responses"]["429"]
    assert documented["description"] == "Too Many Requests"
    problem_ref = {"$ref": "#/components/schemas/Problem"}
    assert documented["content"] == {MEDIA_TYPE: {"schema": problem_ref}}
    # Validation errors are documented as what is sent, not as FastAPI's HTTPValidationError.
    invalid = schema["paths"]["/value"]["put"]["responses"]["422"]
    assert invalid["content"] == {MEDIA_TYPE: {"schema": problem_ref}}
    assert "HTTPValidationError" not in schema["components"]["schemas"]
