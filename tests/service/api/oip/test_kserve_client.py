"""v2 through KServe's own REST client (`kserve.InferenceRESTClient`) against a running service.

KServe is the optional extra `.[kserve]`; without it these tests skip. Every answer is held
against v1's for the same pixels, bit for bit, for both shipped models.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
import pytest

from tests.helpers import png
from tests.servers import ServiceProcess
from tests.service.api.oip.answers import cells, v1

kserve = pytest.importorskip("kserve", reason="KServe's client is the optional extra `.[kserve]`")
from kserve.protocol.infer_type import RequestedOutput  # noqa: E402

MODELS = ["unet-sigmoid", "unet-relu"]
T = TypeVar("T")


@pytest.fixture(scope="module")
def service(shipped_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A running service with an API key: inference, a read, must not need it."""
    state = tmp_path_factory.mktemp("kserve-state")
    process = ServiceProcess(shipped_weights, state, {"UNET_API_KEY": "v2-key"})
    try:
        yield f"127.0.0.1:{process.port}"
    finally:
        process.stop()


def with_client(work: Callable[[Any], Awaitable[T]]) -> T:
    """`work(client)` with a fresh v2 `InferenceRESTClient`, on an event loop of its own."""

    async def run() -> T:
        config = kserve.RESTConfig(protocol="v2", retries=0, timeout=300)
        async with kserve.InferenceRESTClient(config) as client:
            return await work(client)

    return asyncio.run(run())


def request(model: str, array: np.ndarray, datatype: str, binary: bool, **parameters: Any) -> Any:
    """An InferRequest of `array` as input `image`, asking for every output."""
    tensor = kserve.InferInput("image", list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    outputs = [
        RequestedOutput(name, parameters={"binary_data": binary})
        for name in ("probabilities", "mask", "threshold")
    ]
    return kserve.InferRequest(
        model, [tensor], parameters=parameters or None, request_outputs=outputs
    )


def infer(service: str, model: str, infer_request: Any) -> Any:
    """The service's InferResponse, read by KServe's client."""
    return with_client(lambda client: client.infer(f"http://{service}", infer_request, model))


def assert_same_as_v1(response: Any, expected: list[tuple[np.ndarray, ...]]) -> None:
    outputs = {output.name: output.as_numpy() for output in response.outputs}
    scores, mask = outputs["probabilities"], outputs["mask"]
    height, width = expected[0][0].shape
    assert scores.shape == mask.shape == (len(expected), 1, height, width)
    assert scores.dtype == np.float32 and mask.dtype == np.uint8
    for index, (v1_scores, v1_mask, v1_threshold) in enumerate(expected):
        assert np.array_equal(scores[index, 0], v1_scores)  # bit for bit
        assert np.array_equal(mask[index, 0], v1_mask)
        assert outputs["threshold"].tolist() == [np.float32(v1_threshold)]
        assert response.parameters["threshold"] == v1_threshold


def test_health(service: str) -> None:
    base = f"http://{service}"

    async def ask(client: Any) -> list[bool]:
        return [
            await client.is_server_live(base),
            await client.is_server_ready(base),
            *[await client.is_model_ready(base, model) for model in MODELS],
            await client.is_model_ready(base, "nope"),
        ]

    assert with_client(ask) == [True, True, True, True, False]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("model", MODELS)
def test_an_odd_sized_batch_gets_v1s_answer(service: str, model: str, binary: bool) -> None:
    images = np.stack([cells(37, 53, seed=seed) for seed in (10, 11)])
    response = infer(service, model, request(model, images, "UINT8", binary))
    assert_same_as_v1(response, [v1(service, model, png(image)) for image in images])
    assert response.model_name == model
    assert response.parameters["threshold_source"] == "default"


def test_files_as_bytes_binary_and_base64_json(service: str) -> None:
    image = cells(29, 41, seed=12)
    expected = [v1(service, "unet-relu", png(image))]
    files = np.array([png(image)], dtype=object)
    assert_same_as_v1(
        infer(service, "unet-relu", request("unet-relu", files, "BYTES", True)), expected
    )
    # JSON holds text: a client sends a file as its base64 string.
    text = np.array([base64.b64encode(png(image)).decode()], dtype=object)
    assert_same_as_v1(
        infer(service, "unet-relu", request("unet-relu", text, "BYTES", False)), expected
    )


def test_a_request_threshold_and_an_error(service: str) -> None:
    image = cells(24, 24, seed=13)
    response = infer(
        service, "unet-sigmoid", request("unet-sigmoid", image[None], "UINT8", True, threshold=0.25)
    )
    outputs = {output.name: output.as_numpy() for output in response.outputs}
    assert np.array_equal(outputs["mask"], (outputs["probabilities"] >= 0.25).astype(np.uint8))
    assert response.parameters["threshold_source"] == "request"
    wrong = request("unet-sigmoid", image[None].astype(np.int32), "INT32", True)
    with pytest.raises(httpx.HTTPStatusError, match="datatype INT32") as raised:
        infer(service, "unet-sigmoid", wrong)
    assert raised.value.response.status_code == 400
