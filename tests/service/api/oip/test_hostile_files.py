"""The hostile-input corpus through v2: BYTES files as v1's uploads, and extreme raw pixels.

Whatever arrives, the answer is a 200 with finite outputs or a 4xx `{"error"}` with v1's status
(v1's 422 is the protocol's 400): never a 5xx, never NaN in an answer.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from httpx import Response

from service.app import create_app
from service.settings import Settings
from tests.hostile.make_corpus import images

pytestmark = pytest.mark.filterwarnings("ignore:Corrupt EXIF data:UserWarning")

INFER = "/v2/models/unet-sigmoid/infer"
CORPUS = dict(images())
# v1's answer to each kind of case (tests/hostile/test_corpus.py), in the protocol's statuses.
EXPECTED: dict[str, int | None] = {
    "dtype": 200,
    "nonfinite": 400,
    "complex": 400,
    "truncated": 400,
    "lying": None,  # answered or refused, as v1
    "huge": 413,
    "bomb": 413,
    "inflate": 400,
    "overlong": 200,
}


@pytest.fixture(scope="module")
def client(shipped_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    state = tmp_path_factory.mktemp("state")
    with TestClient(create_app(Settings(model_dir=shipped_weights, state_dir=state))) as client:
        yield client


def infer(client: TestClient, datatype: str, array: np.ndarray, raw: bytes) -> Response:
    """A binary-tensor request for `array`'s shape carrying `raw`."""
    header = {
        "inputs": [
            {
                "name": "image",
                "datatype": datatype,
                "shape": list(array.shape),
                "parameters": {"binary_data_size": len(raw)},
            }
        ],
        "parameters": {"binary_data_output": True},
    }
    head = json.dumps(header).encode()
    return client.post(
        INFER, content=head + raw, headers={"Inference-Header-Content-Length": str(len(head))}
    )


def assert_finite(response: Response) -> None:
    assert response.status_code == 200, response.text[:300]
    length = int(response.headers["inference-header-content-length"])
    document = json.loads(response.content[:length])
    scores = document["outputs"][0]
    assert scores["name"] == "probabilities" and len(scores["shape"]) == 4
    size = scores["parameters"]["binary_data_size"]
    values = np.frombuffer(response.content[length : length + size], dtype="<f4")
    assert values.size == np.prod(scores["shape"]) and np.isfinite(values).all()


@pytest.mark.parametrize("name", list(CORPUS))
def test_every_hostile_file_is_answered_finite_or_refused(client: TestClient, name: str) -> None:
    data = CORPUS[name]
    files = np.array([data], dtype=object)
    response = infer(client, "BYTES", files, len(data).to_bytes(4, "little") + data)
    assert response.status_code < 500, response.text[:300]
    expected = EXPECTED[name.split("-")[0]]
    if expected == 200 or (expected is None and response.status_code == 200):
        assert_finite(response)
        return
    assert response.status_code == (expected or 400), response.text[:300]
    assert set(response.json()) == {"error"} and response.json()["error"]


@pytest.mark.parametrize(
    ("datatype", "values"),
    [
        ("FP32", np.array([-3.4e38, 3.4e38, 0.0, 1e-38], dtype=np.float32)),
        ("UINT16", np.array([0, 65535, 65535, 1], dtype=np.uint16)),
        ("UINT8", np.array([255, 255, 255, 255], dtype=np.uint8)),
        ("FP32", np.array([7.0, 7.0, 7.0, 7.0], dtype=np.float32)),
    ],
)
def test_extreme_raw_pixels_are_answered_finite(
    client: TestClient, datatype: str, values: np.ndarray
) -> None:
    array = np.resize(values, (1, 24, 24))
    assert_finite(
        infer(client, datatype, array, array.astype(array.dtype.newbyteorder("<")).tobytes())
    )


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_raw_pixels_are_refused(client: TestClient, value: float) -> None:
    array = np.zeros((1, 8, 8), dtype=np.float32)
    array[0, 3, 5] = value
    response = infer(client, "FP32", array, array.tobytes())
    assert response.status_code == 400
    assert "1 of 64 pixel values are NaN or infinite" in response.json()["error"]
