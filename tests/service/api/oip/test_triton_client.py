"""v2 through NVIDIA's own client (`tritonclient.http`) against a running service, beside v1.

Every answer is compared with v1's for the same pixels: the `npy` probabilities and the PNG
mask, bit for bit, for both shipped models.
"""

from __future__ import annotations

import base64
import gzip
import http.client
import io
import json
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import tifffile
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.helpers import dataset_files, make_zip, png, until
from tests.servers import ServiceProcess
from tests.service.api.oip.answers import cells, v1

MODELS = ["unet-sigmoid", "unet-relu"]
KEY = "v2-key"


@pytest.fixture(scope="module")
def service(shipped_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A running service with an API key: inference, a read, must not need it."""
    state = tmp_path_factory.mktemp("oip-state")
    process = ServiceProcess(shipped_weights, state, {"UNET_API_KEY": KEY})
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
    client: triton.InferenceServerClient,
    model: str,
    array: np.ndarray,
    datatype: str,
    binary: bool = True,
    **options: object,
) -> triton.InferResult:
    tensor = triton.InferInput("image", list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    outputs = [
        triton.InferRequestedOutput(name, binary_data=binary)
        for name in ("probabilities", "mask", "threshold")
    ]
    return client.infer(model, [tensor], outputs=outputs, **options)  # type: ignore[arg-type]


def assert_same_as_v1(result: triton.InferResult, expected: list[tuple[np.ndarray, ...]]) -> None:
    scores, mask = result.as_numpy("probabilities"), result.as_numpy("mask")
    height, width = expected[0][0].shape
    assert scores.shape == mask.shape == (len(expected), 1, height, width)
    assert scores.dtype == np.float32 and mask.dtype == np.uint8
    for index, (v1_scores, v1_mask, v1_threshold) in enumerate(expected):
        assert np.array_equal(scores[index, 0], v1_scores)  # bit for bit
        assert np.array_equal(mask[index, 0], v1_mask)
        assert result.as_numpy("threshold").tolist() == [np.float32(v1_threshold)]
        assert result.get_response()["parameters"]["threshold"] == v1_threshold


def test_health_and_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    server = client.get_server_metadata()
    assert "binary_tensor_data" in server["extensions"]
    for model in MODELS:
        assert client.is_model_ready(model)
        metadata = client.get_model_metadata(model)
        assert metadata["name"] == model and metadata["platform"] in ("torch", "onnxruntime")
        (version,) = metadata["versions"]
        assert client.is_model_ready(model, model_version=version)
        assert client.get_model_metadata(model, model_version=version)["versions"] == [version]
        assert [(t["name"], t["datatype"], t["shape"]) for t in metadata["outputs"]] == [
            ("probabilities", "FP32", [-1, 1, -1, -1]),
            ("mask", "UINT8", [-1, 1, -1, -1]),
            ("threshold", "FP32", [1]),
        ]
        assert metadata["inputs"][0]["name"] == "image"
        assert not client.is_model_ready(model, model_version="0" * 64)
    assert not client.is_model_ready("nope")
    with pytest.raises(InferenceServerException, match="no model named 'nope'"):
        client.get_model_metadata("nope")


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("model", MODELS)
def test_an_odd_sized_image_gets_v1s_answer(
    service: str, client: triton.InferenceServerClient, model: str, binary: bool
) -> None:
    image = cells(45, 67, seed=1)
    result = infer(client, model, image[None], "UINT8", binary)
    assert_same_as_v1(result, [v1(service, model, png(image))])
    assert result.get_response()["parameters"]["threshold_source"] == "default"
    assert result.get_response()["model_version"] == client.get_model_metadata(model)["versions"][0]


def test_a_batch_of_n_is_n_images(service: str, client: triton.InferenceServerClient) -> None:
    images = np.stack([cells(64, 80, seed=seed) for seed in range(3)])
    result = infer(client, "unet-sigmoid", images, "UINT8")
    assert_same_as_v1(result, [v1(service, "unet-sigmoid", png(image)) for image in images])


def test_wide_pixels_and_files_are_read_as_v1_reads_uploads(
    service: str, client: triton.InferenceServerClient
) -> None:
    image = cells(50, 70, seed=2)
    wide = (image.astype(np.uint16) * 257 + 3).astype(np.uint16)
    expected = v1(service, "unet-sigmoid", png(wide))
    assert_same_as_v1(infer(client, "unet-sigmoid", wide[None, :, :, None], "UINT16"), [expected])
    real = (image / 300).astype(np.float32)
    tiff = io.BytesIO()
    tifffile.imwrite(tiff, real)
    expected = v1(service, "unet-sigmoid", tiff.getvalue(), "x.tif")
    assert_same_as_v1(infer(client, "unet-sigmoid", real[None], "FP32"), [expected])
    files = np.array([png(image), tiff.getvalue()], dtype=object)
    assert_same_as_v1(
        infer(client, "unet-sigmoid", files, "BYTES"),
        [v1(service, "unet-sigmoid", png(image)), expected],
    )


def test_files_in_json_are_base64_text(service: str, client: triton.InferenceServerClient) -> None:
    image = cells(26, 38, seed=9)
    tiff = io.BytesIO()
    tifffile.imwrite(tiff, image)
    files = [png(image), tiff.getvalue()]
    with pytest.raises(InferenceServerException, match="UTF-8"):  # JSON cannot hold raw files
        infer(client, "unet-sigmoid", np.array(files, dtype=object), "BYTES", binary=False)
    text = np.array([base64.b64encode(file).decode() for file in files], dtype=object)
    expected = v1(service, "unet-sigmoid", files[0])
    result = infer(client, "unet-sigmoid", text, "BYTES", binary=False)
    assert_same_as_v1(result, [expected, expected])


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_requests_and_answers(
    service: str, client: triton.InferenceServerClient, algorithm: str
) -> None:
    image = cells(40, 48, seed=3)
    result = infer(
        client,
        "unet-relu",
        image[None],
        "UINT8",
        request_compression_algorithm=algorithm,
        response_compression_algorithm=algorithm,
    )
    assert_same_as_v1(result, [v1(service, "unet-relu", png(image))])


def test_an_answer_is_compressed_only_when_asked(service: str) -> None:
    image = cells(64, 64, seed=3)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "UINT8",
                    "shape": [1, 64, 64],
                    "parameters": {"binary_data_size": image.size},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    host, port = service.split(":")
    answers = {}
    for accept in (None, "gzip", "deflate;q=0.5, gzip;q=0.1"):
        headers = {"Inference-Header-Content-Length": str(len(header))}
        if accept is not None:
            headers["Accept-Encoding"] = accept
        connection = http.client.HTTPConnection(host, int(port), timeout=60)  # inflates nothing
        connection.request("POST", "/v2/models/unet-relu/infer", header + image.tobytes(), headers)
        answer = connection.getresponse()
        answers[accept] = (answer.status, dict(answer.getheaders()), answer.read())
        connection.close()
    status, plain_headers, plain = answers[None]
    assert status == 200 and "content-encoding" not in {k.lower() for k in plain_headers}
    status, headers, zipped = answers["gzip"]
    assert status == 200 and headers["content-encoding"] == "gzip"
    assert gzip.decompress(zipped) == plain and len(zipped) < len(plain)
    # The header length is the JSON's before compression, as tritonclient splits the answer.
    assert (
        headers["inference-header-content-length"]
        == plain_headers["inference-header-content-length"]
    )
    status, headers, deflated = answers["deflate;q=0.5, gzip;q=0.1"]
    assert status == 200 and headers["content-encoding"] == "deflate"
    assert zlib.decompress(deflated) == plain


def test_a_threshold_for_this_request_and_outputs_by_default(
    client: triton.InferenceServerClient,
) -> None:
    image = cells(33, 31, seed=4)
    tensor = triton.InferInput("image", [1, 33, 31], "UINT8")
    tensor.set_data_from_numpy(image[None])
    result = client.infer("unet-sigmoid", [tensor], parameters={"threshold": 0.3})
    scores = result.as_numpy("probabilities")  # no outputs named: all of them, as raw bytes
    assert np.array_equal(result.as_numpy("mask"), (scores >= 0.3).astype(np.uint8))
    parameters = result.get_response()["parameters"]
    assert parameters["threshold"] == 0.3 and parameters["threshold_source"] == "request"
    assert parameters["drift_status"] == "no_reference" and "calibration_id" not in parameters


def test_the_clients_errors_carry_the_services_message(
    client: triton.InferenceServerClient,
) -> None:
    tensor = triton.InferInput("image", [1, 4, 4], "INT32")
    tensor.set_data_from_numpy(np.zeros((1, 4, 4), dtype=np.int32))
    with pytest.raises(InferenceServerException, match="datatype INT32") as raised:
        client.infer("unet-sigmoid", [tensor])
    assert raised.value.status() == "400"
    tensor = triton.InferInput("image", [1, 4, 4], "UINT8")
    tensor.set_data_from_numpy(np.zeros((1, 4, 4), dtype=np.uint8))
    with pytest.raises(InferenceServerException, match="unknown output") as raised:
        client.infer("unet-sigmoid", [tensor], outputs=[triton.InferRequestedOutput("logits")])
    assert raised.value.status() == "400"


def test_json_without_a_content_type_as_curl_sends_it(service: str) -> None:
    image = cells(20, 24, seed=5)
    body = {
        "inputs": [
            {"name": "image", "datatype": "UINT8", "shape": [1, 20, 24], "data": image.tolist()}
        ],
        "outputs": [{"name": "mask"}],
    }
    host, port = service.split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    connection.request("POST", "/v2/models/unet-sigmoid/infer", json.dumps(body).encode())
    answer = connection.getresponse()
    document = json.loads(answer.read())
    connection.close()
    assert answer.status == 200, document
    assert answer.getheader("content-type") == "application/json"
    (mask,) = document["outputs"]
    assert mask["shape"] == [1, 1, 20, 24] and mask["datatype"] == "UINT8"
    expected = v1(service, "unet-sigmoid", png(image))[1]
    assert np.array_equal(np.array(mask["data"], dtype=np.uint8).reshape(20, 24), expected)


@pytest.mark.slow
def test_a_tiled_2048_px_image(service: str, client: triton.InferenceServerClient) -> None:
    image = cells(2048, 2048, seed=6)
    result = infer(client, "unet-sigmoid", image[None], "UINT8")
    assert_same_as_v1(result, [v1(service, "unet-sigmoid", png(image))])


@pytest.mark.slow
def test_overload_is_503_with_retry_after(shipped_weights: Path, tmp_path: Path) -> None:
    process = ServiceProcess(shipped_weights, tmp_path / "state", {"UNET_QUEUE_SIZE": "1"})
    try:
        image = cells(512, 512, seed=7)
        body = json.dumps(
            {
                "inputs": [
                    {
                        "name": "image",
                        "datatype": "UINT8",
                        "shape": [1, 512, 512],
                        "parameters": {"binary_data_size": image.size},
                    }
                ]
            }
        ).encode()
        headers = {"Inference-Header-Content-Length": str(len(body))}
        url = f"{process.base}/v2/models/unet-sigmoid/infer"

        def post(_: int) -> httpx.Response:
            return httpx.post(url, content=body + image.tobytes(), headers=headers, timeout=120)

        with ThreadPoolExecutor(24) as pool:
            answers = list(pool.map(post, range(24)))
    finally:
        process.stop()
    refused = [a for a in answers if a.status_code == 503]
    assert refused, [a.status_code for a in answers]
    assert {a.status_code for a in answers} <= {200, 503}
    for answer in refused:
        assert int(answer.headers["retry-after"]) >= 1
        assert "UNET_QUEUE_SIZE" in answer.json()["error"]


def test_a_calibrated_threshold_is_named_in_the_answer(
    service: str, client: triton.InferenceServerClient
) -> None:
    base = f"http://{service}/v1/models/unet-relu"
    auth = {"Authorization": f"Bearer {KEY}"}
    dataset = make_zip(dataset_files(n=3, seed=12))
    with httpx.Client(timeout=120) as http:
        started = http.post(
            f"{base}/calibrations",
            files={"dataset": ("set.zip", dataset, "application/zip")},
            data={"strategy": "f1", "force": "true"},
            headers=auth,
        )
        assert started.status_code == 202, started.text
        job = started.headers["location"]
        until(
            lambda: http.get(f"http://{service}{job}").json()["status"] not in ("queued", "running")
        )
        calibration = http.get(f"http://{service}{job}").json()
        assert calibration["status"] == "succeeded", calibration["error"]
        try:
            image = cells(30, 40, seed=8)
            result = infer(client, "unet-relu", image[None], "UINT8")
            parameters = result.get_response()["parameters"]
            assert parameters["threshold_source"] == "calibration"
            assert parameters["calibration_id"] == calibration["id"]
            assert parameters["threshold"] == calibration["threshold"]
            assert parameters["drift_status"] in ("ok", "warn", "alert")
            assert_same_as_v1(result, [v1(service, "unet-relu", png(image))])
        finally:  # the other tests expect the checkpoint's default
            assert http.delete(f"{base}/threshold", headers=auth).status_code == 200
