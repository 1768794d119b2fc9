"""v2 refusals through the real app: each a status with `{"error": ...}` naming the problem, and
not one pass of the model run for any of them (the batch counter stays where it was)."""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from service.app import create_app
from service.settings import Settings
from tests.helpers import png

INFER = "/v2/models/unet-sigmoid/infer"
PIXELS = np.arange(12, dtype=np.uint8).reshape(1, 3, 4)


@pytest.fixture(scope="module")
def client(shipped_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = Settings(
        model_dir=shipped_weights,
        state_dir=tmp_path_factory.mktemp("refusals") / "state",
        api_key=SecretStr("key"),
        max_upload_bytes=200_000,
        max_image_pixels=100 * 100,
        queue_size=4,
    )
    with TestClient(create_app(settings)) as test_client:
        deadline = time.monotonic() + 60
        while test_client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "not ready within 60 s"
            time.sleep(0.1)
        yield test_client


def passes(client: TestClient) -> float:
    """How many batches the engine has run, from /metrics."""
    lines = client.get("/metrics").text.splitlines()
    return sum(
        float(line.split()[-1]) for line in lines if line.startswith("unet_batch_size_count")
    )


def binary(header: dict[str, Any], data: bytes, length: int | None = None) -> dict[str, Any]:
    """httpx arguments for a request with the binary tensor extension."""
    head = json.dumps(header).encode()
    size = len(head) if length is None else length
    return {"content": head + data, "headers": {"Inference-Header-Content-Length": str(size)}}


def image(**fields: Any) -> dict[str, Any]:
    return {"name": "image", "datatype": "UINT8", "shape": [1, 3, 4], **fields}


def as_json(*inputs: dict[str, Any], **request: Any) -> dict[str, Any]:
    return {"content": json.dumps({"inputs": list(inputs), **request}).encode()}


def two_sizes() -> dict[str, Any]:
    files = [png(np.zeros((4, 4), dtype=np.uint8)), png(np.zeros((4, 5), dtype=np.uint8))]
    data = b"".join(len(f).to_bytes(4, "little") + f for f in files)
    header = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2]}]}
    header["inputs"][0]["parameters"] = {"binary_data_size": len(data)}
    return binary(header, data)


DATA = PIXELS.ravel().tolist()
SIZE = {"parameters": {"binary_data_size": PIXELS.size}}
CASES: list[tuple[str, int, dict[str, Any], str]] = [
    (
        "wrong datatype",
        400,
        as_json(image(datatype="INT32", data=DATA)),
        "datatype INT32; send UINT8, UINT16 or FP32",
    ),
    ("wrong rank", 400, as_json(image(shape=[12], data=DATA)), "give [N, H, W] or [N, H, W, C]"),
    (
        "too many channels",
        400,
        as_json(image(shape=[1, 1, 2, 6], data=DATA)),
        "C 1 to 4",
    ),
    (
        "shape disagrees with data",
        400,
        as_json(image(shape=[1, 3, 5], data=DATA)),
        "holds 15 values but `data` has 12",
    ),
    (
        "binary_data_size overruns the body",
        400,
        binary({"inputs": [image(parameters={"binary_data_size": 13})]}, PIXELS.tobytes()),
        "binary_data_size 13 overruns the body: only 12 bytes",
    ),
    (
        "binary size disagrees with the shape",
        400,
        binary({"inputs": [image(shape=[1, 3, 3], **SIZE)]}, PIXELS.tobytes()),
        "disagrees with shape [1, 3, 3] of UINT8",
    ),
    (
        "missing header",
        400,
        {"content": json.dumps({"inputs": [image(**SIZE)]}).encode() + PIXELS.tobytes()},
        "needs the Inference-Header-Content-Length header",
    ),
    (
        "binary_data_size without the header",
        400,
        as_json(image(**SIZE)),
        "no Inference-Header-Content-Length header",
    ),
    (
        "unknown output names",
        400,
        as_json(image(data=DATA), outputs=[{"name": "mask"}, {"name": "logits"}]),
        "unknown output(s) ['logits']",
    ),
    (
        "N over the batch limit",
        400,
        as_json(image(shape=[5, 3, 4], data=DATA * 5)),
        "holds 5 images; a request may hold at most 4",
    ),
    ("no image", 400, as_json(image(shape=[0, 3, 4], data=[])), "holds no image"),
    (
        "another input",
        400,
        as_json(image(data=DATA), {**image(data=DATA), "name": "mask"}),
        "takes one input, 'image'",
    ),
    (
        "threshold out of range",
        400,
        as_json(image(data=DATA), parameters={"threshold": 1.5}),
        "outside the sigmoid head's output range",
    ),
    (
        "threshold not a number",
        400,
        as_json(image(data=DATA), parameters={"threshold": "0.5"}),
        "threshold must be a number",
    ),
    (
        "NaN pixels",
        400,
        {
            "content": b'{"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 1, 2],'
            b' "data": [0.5, NaN]}]}'
        },
        "NaN or infinite",
    ),
    (
        "unreadable file",
        400,
        as_json({"name": "image", "datatype": "BYTES", "shape": [1], "data": ["bm90IGFuIGltYWdl"]}),
        "image[0]",
    ),
    ("files of two sizes", 400, two_sizes(), "different sizes (4 x 4, 5 x 4)"),
    ("not JSON", 400, {"content": b"\x00garbage"}, "is not JSON"),
    (
        "image over the pixel limit",
        413,
        as_json(image(shape=[1, 101, 100], data=[0] * 10100)),
        "over the 10000 pixel limit (UNET_MAX_IMAGE_PIXELS)",
    ),
    (
        "body over the limit",
        413,
        {"content": b" " * 300_000},
        "UNET_MAX_UPLOAD_BYTES",
    ),
    (
        "a gzip body inflating over the limit",
        413,
        {"content": gzip.compress(b" " * 400_000), "headers": {"Content-Encoding": "gzip"}},
        "inflates past",
    ),
]


@pytest.mark.parametrize(("what", "status", "request_", "says"), CASES, ids=[c[0] for c in CASES])
def test_a_bad_request_is_refused_before_the_model(
    client: TestClient, what: str, status: int, request_: dict[str, Any], says: str
) -> None:
    before = passes(client)
    response = client.post(INFER, **request_)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert set(response.json()) == {"error"}
    assert says in response.json()["error"]
    assert passes(client) == before


def test_models_and_versions_that_are_not_served(client: TestClient) -> None:
    for path in ("/v2/models/nope", "/v2/models/nope/ready", "/v2/models/nope/infer"):
        answer = client.request("POST" if path.endswith("infer") else "GET", path, content=b"{}")
        assert answer.status_code == 404 and "no model named 'nope'" in answer.json()["error"]
    version = client.get("/v2/models/unet-sigmoid").json()["versions"][0]
    assert client.get(f"/v2/models/unet-sigmoid/versions/{version}").status_code == 200
    assert client.get(f"/v2/models/unet-sigmoid/versions/{version}/ready").status_code == 200
    wrong = client.get("/v2/models/unet-sigmoid/versions/7")
    assert wrong.status_code == 404 and f"it serves version {version}" in wrong.json()["error"]
    answer = client.post(
        f"/v2/models/unet-sigmoid/versions/{version}/infer", **as_json(image(data=DATA))
    )
    assert answer.status_code == 200 and answer.json()["model_version"] == version
    unmatched = client.get("/v2/nothing/here")
    assert unmatched.status_code == 404 and set(unmatched.json()) == {"error"}


def test_inference_needs_no_key_as_v1_reads_do(client: TestClient) -> None:
    before = passes(client)
    answer = client.post(INFER, **as_json(image(shape=[2, 3, 2], data=DATA)))
    assert answer.status_code == 200, answer.text
    assert passes(client) == before + 2  # the counter the refusals read sees each image's pass
    assert answer.headers["x-threshold-source"] == "default"  # as v1 answers say
    assert client.put("/v1/models/unet-sigmoid/threshold", json={"value": 0.3}).status_code == 401


def test_a_cross_site_page_is_refused_in_the_protocols_shape(client: TestClient) -> None:
    answer = client.post(INFER, headers={"Sec-Fetch-Site": "cross-site"}, **as_json(image()))
    assert answer.status_code == 403 and "another origin" in answer.json()["error"]
