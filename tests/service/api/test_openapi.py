"""The OpenAPI document: names client generators turn into good methods, and the truth.

Every operation is exercised through the real app and each real response (status, media type,
JSON body) is checked against what the document says it answers.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from jsonschema import Draft202012Validator
from pydantic import SecretStr

from service.app import create_app
from service.settings import Settings
from tests.helpers import dataset_files, make_zip, until, wait_for_calibration

SIGMOID, RELU = "/v1/models/unet-sigmoid", "/v1/models/unet-relu"
KEY = "conformance-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
OCTET_STREAM = "application/octet-stream"  # listed for generators; the service names the type
EXPECTED_IDS = {
    ("get", "/healthz"): "health-live",
    ("get", "/readyz"): "health-ready",
    ("get", "/metrics"): "health-metrics",
    ("get", "/v1/models"): "models-list",
    ("get", "/v1/models/{model}"): "models-get",
    ("post", "/v1/models/{model}/mask"): "inference-mask",
    ("post", "/v1/models/{model}/probabilities"): "inference-probabilities",
    ("post", "/v1/models/{model}/overlay"): "inference-overlay",
    ("post", "/v1/models/{model}/calibrations"): "calibrations-start",
    ("get", "/v1/models/{model}/calibrations"): "calibrations-list",
    ("get", "/v1/models/{model}/calibrations/{calibration_id}"): "calibrations-get",
    ("get", "/v1/models/{model}/calibrations/{calibration_id}/roc.png"): "calibrations-roc",
    ("post", "/v1/models/{model}/calibrations/{calibration_id}/activate"): "calibrations-activate",
    ("get", "/v1/models/{model}/threshold"): "thresholds-get",
    ("put", "/v1/models/{model}/threshold"): "thresholds-set",
    ("get", "/v2"): "oip-server-metadata",
    ("get", "/v2/health/live"): "oip-server-live",
    ("get", "/v2/health/ready"): "oip-server-ready",
    ("get", "/v2/models/{model}"): "oip-model-metadata",
    ("get", "/v2/models/{model}/ready"): "oip-model-ready",
    ("post", "/v2/models/{model}/infer"): "oip-infer",
    ("get", "/v2/models/{model}/versions/{version}"): "oip-model-version-metadata",
    ("get", "/v2/models/{model}/versions/{version}/ready"): "oip-model-version-ready",
    ("post", "/v2/models/{model}/versions/{version}/infer"): "oip-infer-version",
}
# The Open Inference Protocol's errors are `{"error": ...}`, not problem details.
OIP_ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/OipErrorBody"}}}
PROBLEM_ERROR = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}


def operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(method, path template, operation) of every operation in `spec`."""
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if isinstance(operation, dict) and "responses" in operation:
                yield method, path, operation


@pytest.fixture(scope="module")
def spec(shipped_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    state = tmp_path_factory.mktemp("spec-state")
    document: dict[str, Any] = (
        TestClient(create_app(Settings(model_dir=shipped_weights, state_dir=state)))
        .get("/openapi.json")
        .json()
    )
    return document


def test_operation_ids_are_tag_and_route_name(spec: dict[str, Any]) -> None:
    found = {(method, path): op["operationId"] for method, path, op in operations(spec)}
    assert {key: found.get(key) for key in EXPECTED_IDS} == EXPECTED_IDS
    for operation_id in found.values():
        assert re.fullmatch(r"[a-z]+-[a-z-]+", operation_id), operation_id
    for method, path, operation in operations(spec):
        assert operation["operationId"].startswith(operation["tags"][0] + "-"), (method, path)
    assert [tag["name"] for tag in spec["tags"]] == [
        "health",
        "models",
        "inference",
        "calibrations",
        "thresholds",
        "oip",
    ]


def test_uploads_are_files_and_binary_answers_are_bytes(spec: dict[str, Any]) -> None:
    schemas = spec["components"]["schemas"]
    uploads = {
        (name, field): schema
        for name, component in schemas.items()
        for field, schema in component.get("properties", {}).items()
        if "contentMediaType" in schema
    }
    assert set(uploads) == {
        ("Body_inference-mask", "image"),
        ("Body_inference-probabilities", "image"),
        ("Body_inference-overlay", "image"),
        ("Body_inference-instances", "image"),
        ("Body_calibrations-start", "dataset"),
    }
    for schema in uploads.values():
        assert schema["type"] == "string" and schema["format"] == "binary"
    for method, path, operation in operations(spec):
        for status, response in operation["responses"].items():
            content = response.get("content", {})
            binary = [
                m for m, media in content.items() if media["schema"].get("format") == "binary"
            ]
            if binary:  # the generator's one binary type comes first, before any JSON
                assert next(iter(content)) == OCTET_STREAM, (method, path, status)
            elif status.startswith("4"):
                expected = OIP_ERROR if path.startswith("/v2") else PROBLEM_ERROR
                assert content == expected, (method, path, status)


class Conformance:
    """An httpx response hook: each response must be one its operation documents."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.components = spec["components"]
        self.routes = [
            (method, re.compile(re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(path))), operation)
            for method, path, operation in operations(spec)
        ]
        self.seen: set[tuple[str, str, str]] = set()  # (operationId, status, media type)

    def __call__(self, response: httpx.Response) -> None:
        """Check `response` against the document and record what it covered."""
        response.read()
        request = response.request
        operation = self.operation(request.method.lower(), request.url.path)
        name, status = operation["operationId"], str(response.status_code)
        documented = operation["responses"].get(status)
        assert documented is not None, f"{name} answered {status}, which it does not document"
        media_type = response.headers.get("content-type", "")
        content = documented.get("content", {})
        if not content and not response.content:  # an empty answer, documented as such
            self.seen.add((name, status, ""))
            return
        if media_type not in content:  # a documented base type covers the parameters sent
            media_type = media_type.partition(";")[0].strip()
        assert media_type in content, f"{name} {status} sent {media_type}, not one of {content}"
        if media_type == "application/json" or media_type.endswith("+json"):
            schema = {"allOf": [content[media_type]["schema"]], "components": self.components}
            errors = [e.message for e in Draft202012Validator(schema).iter_errors(response.json())]
            assert not errors, f"{name} {status}: {errors} in {response.text[:500]}"
        self.seen.add((name, status, media_type))

    def operation(self, method: str, path: str) -> dict[str, Any]:
        """The operation `method path` is an instance of."""
        for route_method, pattern, operation in self.routes:
            if route_method == method and pattern.fullmatch(path):
                return operation
        raise AssertionError(f"{method.upper()} {path} is no documented operation")

    def missing(self) -> list[str]:
        """Documented success media types and problem statuses that no response showed."""
        gaps = []
        for method, path, operation in operations(self.spec):
            name = operation["operationId"]
            responses = operation["responses"]
            for status, response in responses.items():
                if status.startswith("2"):
                    for media_type in set(response.get("content", {})) - {OCTET_STREAM}:
                        if (name, status, media_type) not in self.seen:
                            gaps.append(f"{method.upper()} {path} ({name}): {status} {media_type}")
            problems = [status for status in responses if status.startswith("4")]
            if problems and not any(seen[0] == name and seen[1] in problems for seen in self.seen):
                gaps.append(f"{method.upper()} {path} ({name}): no problem response (4xx)")
        return gaps


def image_and_zip() -> tuple[bytes, bytes]:
    """A 64 x 64 synthetic image, and a calibration zip of it and 2 more."""
    files = dataset_files(n=3, seed=31)
    return files["images/0000.png"], make_zip(files)


def v2_requests(client: TestClient) -> None:
    """Every `/v2` operation, answered and refused."""
    assert client.get("/v2").status_code == 200
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200
    model = "/v2/models/unet-sigmoid"
    version = client.get(model).json()["versions"][0]
    pixels = {"name": "image", "datatype": "UINT8", "shape": [1, 2, 2], "data": [0, 9, 99, 255]}
    binary = {"inputs": [pixels], "parameters": {"binary_data_output": True}}
    for base in (model, f"{model}/versions/{version}"):
        assert client.get(base).status_code == 200
        assert client.get(f"{base}/ready").status_code == 200
        assert client.post(f"{base}/infer", json={"inputs": [pixels]}).status_code == 200
        assert client.post(f"{base}/infer", json=binary).status_code == 200
        assert client.post(f"{base}/infer", json={"inputs": []}).status_code == 400
        assert client.post(f"{base}/infer", content=bytes(200_000)).status_code == 413
    for path in (
        "/v2/models/nope",
        "/v2/models/nope/ready",
        f"{model}/versions/0",
        f"{model}/versions/0/ready",
    ):
        assert client.get(path).status_code == 404
    for path in ("/v2/models/nope/infer", f"{model}/versions/0/infer"):
        assert client.post(path, json={"inputs": [pixels]}).status_code == 404


def test_every_response_is_one_the_document_describes(
    spec: dict[str, Any], shipped_weights: Path, tmp_path: Path
) -> None:
    settings = Settings(
        model_dir=shipped_weights,
        state_dir=tmp_path / "state",
        api_key=SecretStr(KEY),
        max_upload_bytes=100_000,
    )
    image, dataset = image_and_zip()
    check = Conformance(spec)
    app = create_app(settings)

    unstarted = TestClient(app)  # no lifespan yet: readiness says so
    unstarted.event_hooks["response"] = [check]
    assert unstarted.get("/readyz").status_code == 503
    assert unstarted.get("/v2/health/ready").status_code == 400

    with TestClient(app) as client:
        client.event_hooks["response"] = [check]
        until(lambda: client.get("/readyz").status_code == 200, "service not ready")
        client.get("/healthz")
        client.get("/metrics")
        client.get("/v1/models")
        client.get(SIGMOID)
        client.get("/v1/models/nope")

        def upload(path: str, data: bytes = image, **params: Any) -> httpx.Response:
            return client.post(path, files={"image": ("x.png", data, "image/png")}, params=params)

        for operation in ("mask", "probabilities", "overlay", "instances"):
            assert upload(f"{SIGMOID}/{operation}").status_code == 200
            assert upload(f"{SIGMOID}/{operation}", b"not an image").status_code == 422
            assert upload(f"/v1/models/nope/{operation}").status_code == 404
            assert upload(f"{SIGMOID}/{operation}", bytes(200_000)).status_code == 413
            assert client.post(f"{SIGMOID}/{operation}").status_code == 422  # no image at all
        assert upload(f"{SIGMOID}/mask", format="json").status_code == 200
        assert upload(f"{SIGMOID}/mask", threshold=2).status_code == 422
        assert upload(f"{SIGMOID}/probabilities", format="png").status_code == 200
        assert upload(f"{RELU}/probabilities", format="png").status_code == 422
        for fmt in ("labels", "geojson", "csv"):
            assert upload(f"{SIGMOID}/instances", format=fmt).status_code == 200

        def start(headers: dict[str, str], **form: Any) -> httpx.Response:
            files = {"dataset": ("calibration.zip", dataset, "application/zip")}
            return client.post(f"{SIGMOID}/calibrations", files=files, data=form, headers=headers)

        assert start({}).status_code == 401
        assert start(AUTH, strategy="guess").status_code == 422
        started = start(AUTH, strategy="f1")
        assert started.status_code == 202
        location = started.headers["location"]
        job = wait_for_calibration(lambda: client.get(location).json())
        assert job["status"] == "succeeded", job["error"]
        assert client.get(f"{SIGMOID}/calibrations").status_code == 200
        assert client.get("/v1/models/nope/calibrations").status_code == 404
        assert client.get(f"{SIGMOID}/calibrations/nope").status_code == 404
        assert client.get(f"{location}/roc.png").status_code == 200
        assert client.get(f"{SIGMOID}/calibrations/nope/roc.png").status_code == 404
        assert client.post(f"{location}/activate").status_code == 401
        assert client.post(f"{location}/activate", headers=AUTH).status_code == 200
        assert client.post(f"{SIGMOID}/calibrations/nope/activate", headers=AUTH).status_code == 404
        drift = client.get(f"{SIGMOID}/drift")
        assert drift.status_code == 200 and drift.json()["calibration_id"] == job["id"]
        assert client.get("/v1/models/nope/drift").status_code == 404
        v2_requests(client)

        assert client.get(f"{SIGMOID}/threshold").status_code == 200
        assert client.get("/v1/models/nope/threshold").status_code == 404
        assert client.put(f"{SIGMOID}/threshold", json={"value": 0.3}).status_code == 401
        update = client.put(f"{SIGMOID}/threshold", json={"value": 0.3}, headers=AUTH)
        assert update.status_code == 200
        assert (
            client.put(f"{SIGMOID}/threshold", json={"value": 3}, headers=AUTH).status_code == 422
        )
        assert client.put(f"{SIGMOID}/threshold", json={}, headers=AUTH).status_code == 422
        assert client.get(f"{SIGMOID}/threshold/history").status_code == 200
        assert client.get("/v1/models/nope/threshold/history").status_code == 404
        assert client.delete(f"{SIGMOID}/threshold").status_code == 401
        assert client.delete(f"{SIGMOID}/threshold", headers=AUTH).status_code == 200

    assert not check.missing(), "add a request for each to this test:\n" + "\n".join(
        check.missing()
    )
