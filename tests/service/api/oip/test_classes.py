"""v2 answers of a multi-class model through `tritonclient.http`: K planes, held against v1.

The shipped `unet-multiclass` (nucleus, debris) answers `probabilities` and `mask` as
[N, K, H, W] and `threshold` as [K], in class order; the request parameter `class` narrows the
answer to one plane. Every plane equals v1's answer for the same pixels, bit for bit.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from PIL import Image
from tritonclient.utils import InferenceServerException

from tests.helpers import png
from tests.servers import ServiceProcess
from tests.service.api.oip.answers import cells

MODEL = "unet-multiclass"
CLASSES = ["nucleus", "debris"]


@pytest.fixture(scope="module")
def service(shipped_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    process = ServiceProcess(shipped_weights, tmp_path_factory.mktemp("oip-classes"))
    try:
        yield f"127.0.0.1:{process.port}"
    finally:
        process.stop()


@pytest.fixture(scope="module")
def client(service: str) -> Iterator[triton.InferenceServerClient]:
    triton_client = triton.InferenceServerClient(url=service, network_timeout=300)
    yield triton_client
    triton_client.close()


def infer(
    client: triton.InferenceServerClient, pixels: np.ndarray, **parameters: object
) -> triton.InferResult:
    tensor = triton.InferInput("image", [1, *pixels.shape], "UINT8")
    tensor.set_data_from_numpy(pixels[None], binary_data=True)
    outputs = [
        triton.InferRequestedOutput(name, binary_data=True)
        for name in ("probabilities", "mask", "threshold")
    ]
    return client.infer(MODEL, [tensor], outputs=outputs, parameters=parameters or None)


def v1_answer(service: str, data: bytes, query: str) -> httpx.Response:
    with httpx.Client(timeout=300) as http:
        answer = http.post(
            f"http://{service}/v1/models/{MODEL}/{query}", files={"image": ("x.png", data)}
        )
    assert answer.status_code == 200, answer.text
    return answer


def plane(answer: httpx.Response) -> np.ndarray:
    return (np.asarray(Image.open(io.BytesIO(answer.content))) // 255).astype(np.uint8)


def test_metadata_names_k_planes(client: triton.InferenceServerClient) -> None:
    outputs = {o["name"]: o for o in client.get_model_metadata(MODEL)["outputs"]}
    assert outputs["probabilities"]["shape"] == outputs["mask"]["shape"] == [-1, 2, -1, -1]
    assert outputs["threshold"]["shape"] == [2]
    assert outputs["mask"]["parameters"]["classes"] == ",".join(CLASSES)


def test_every_class_plane_is_v1s_answer(
    service: str, client: triton.InferenceServerClient
) -> None:
    pixels = cells(61, 83, seed=5)
    data = png(pixels)
    result = infer(client, pixels)
    scores, mask = result.as_numpy("probabilities"), result.as_numpy("mask")
    assert scores.shape == mask.shape == (1, 2, 61, 83)
    assert np.array_equal(
        scores[0], np.load(io.BytesIO(v1_answer(service, data, "probabilities").content))
    )
    header = ""
    for k, name in enumerate(CLASSES):
        answer = v1_answer(service, data, f"mask?class={name}")
        assert np.array_equal(mask[0, k], plane(answer)), name
        header = answer.headers["x-threshold"]
    values = dict(part.split("=") for part in header.split(";"))
    assert result.as_numpy("threshold").tolist() == [np.float32(float(values[c])) for c in CLASSES]
    parameters = result.get_response()["parameters"]
    assert parameters["threshold"] == header
    assert parameters["classes"] == ",".join(CLASSES)
    # In a multiclass answer a pixel takes at most one class (the decision rule).
    assert int(mask[0].sum(axis=0).max()) <= 1


def test_the_class_parameter_answers_one_plane(
    service: str, client: triton.InferenceServerClient
) -> None:
    pixels = cells(64, 64, seed=9)
    data = png(pixels)
    result = infer(client, pixels, **{"class": "debris", "threshold": 0.3})
    scores, mask = result.as_numpy("probabilities"), result.as_numpy("mask")
    assert scores.shape == mask.shape == (1, 1, 64, 64)
    one = np.load(io.BytesIO(v1_answer(service, data, "probabilities?class=debris").content))
    assert np.array_equal(scores[0, 0], one)
    answer = v1_answer(service, data, "mask?class=debris&threshold=0.3")
    assert np.array_equal(mask[0, 0], plane(answer))
    assert result.as_numpy("threshold").tolist() == [np.float32(0.3)]
    assert result.get_response()["parameters"]["threshold_source"] == "debris=request"


@pytest.mark.parametrize(
    ("model", "value", "said"),
    [
        ("unet-sigmoid", "nucleus", "binary"),
        (MODEL, "cytoplasm", "nucleus, debris"),
        (MODEL, 3, "nucleus, debris"),
    ],
)
def test_a_class_the_model_lacks_is_a_400(
    client: triton.InferenceServerClient, model: str, value: object, said: str
) -> None:
    tensor = triton.InferInput("image", [1, 8, 8], "UINT8")
    tensor.set_data_from_numpy(np.zeros((1, 8, 8), np.uint8), binary_data=True)
    with pytest.raises(InferenceServerException) as raised:
        client.infer(model, [tensor], parameters={"class": value})
    assert raised.value.status() == "400"
    assert said in raised.value.message()
