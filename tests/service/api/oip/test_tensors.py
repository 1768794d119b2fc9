"""v2 tensors in and out, without HTTP: JSON and binary requests, inflation, encoded answers.

Requests are built by tritonclient's own request writer and answers read by its own result
reader, so both directions are checked against the client that speaks the protocol.
"""

from __future__ import annotations

import base64
import gzip
import json
import zlib

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.http._utils import _get_inference_request

from service.api.oip.tensors import (
    BodyTooLarge,
    OutputTensor,
    TensorError,
    encode_response,
    inflate,
    read_request,
)


def client_request(
    array: np.ndarray, datatype: str, binary: bool, outputs: list[str] | None = None
) -> tuple[bytes, str | None]:
    """The body and Inference-Header-Content-Length tritonclient sends for `array`."""
    tensor = triton.InferInput("image", list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    wanted = [triton.InferRequestedOutput(name) for name in outputs] if outputs else None
    body, length = _get_inference_request(
        [tensor], "req-1", wanted, 0, False, False, 0, None, {"threshold": 0.25}
    )
    return body, None if length is None else str(length)


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize(
    ("dtype", "datatype"), [(np.uint8, "UINT8"), (np.uint16, "UINT16"), (np.float32, "FP32")]
)
def test_a_clients_tensor_arrives_as_it_was_sent(binary: bool, dtype: type, datatype: str) -> None:
    rng = np.random.default_rng(3)
    array = (rng.random((2, 5, 7, 3)) * 200).astype(dtype)
    body, length = client_request(array, datatype, binary, ["mask"])
    request = read_request(body, length)
    (tensor,) = request.inputs
    assert (tensor.name, tensor.datatype, tensor.shape) == ("image", datatype, (2, 5, 7, 3))
    assert tensor.data.dtype == np.dtype(dtype) and np.array_equal(tensor.data, array)
    assert request.id == "req-1" and request.parameters["threshold"] == 0.25
    assert [(o.name, o.binary) for o in request.outputs or []] == [("mask", True)]
    assert not request.binary_outputs


def test_nested_json_data_and_base64_bytes_in_json() -> None:
    nested = {"name": "image", "datatype": "UINT8", "shape": [1, 2, 2], "data": [[[1, 2], [3, 4]]]}
    files = [b"\x89PNG\r\n\x1a\n", b"\x00\xff"]
    encoded = [base64.b64encode(f).decode() for f in files]
    as_bytes = {"name": "b", "datatype": "BYTES", "shape": [2], "data": encoded}
    request = read_request(json.dumps({"inputs": [nested, as_bytes]}).encode(), None)
    assert request.inputs[0].data.tolist() == [[[1, 2], [3, 4]]]
    assert list(request.inputs[1].data) == files
    assert request.outputs is None


def test_binary_bytes_elements_are_length_prefixed_files() -> None:
    files = np.array([b"first file", b"", b"third"], dtype=object)
    body, length = client_request(files, "BYTES", True)
    (tensor,) = read_request(body, length).inputs
    assert tensor.shape == (3,) and list(tensor.data) == list(files)
    assert read_request(body, length).binary_outputs  # no outputs named: all, as raw bytes


def json_request(**image: object) -> bytes:
    entry = {"name": "image", "datatype": "UINT8", "shape": [1, 2, 2], **image}
    return json.dumps({"inputs": [entry]}).encode()


@pytest.mark.parametrize(
    ("body", "length", "says"),
    [
        (b"\x00\x01 not json", None, "Inference-Header-Content-Length header"),
        (b"[]", None, "JSON object"),
        (json.dumps({"inputs": []}).encode(), None, "no `inputs`"),
        (json_request(datatype="UINT7", data=[1, 2, 3, 4]), None, "datatype 'UINT7'"),
        (json_request(shape=[1, -2, 2], data=[1, 2, 3, 4]), None, "non-negative integers"),
        (json_request(data=[1, 2, 3]), None, "holds 4 values but `data` has 3"),
        (json_request(data=[[1, 2], [3]]), None, "ragged"),
        (json_request(data=[1, 2, 3, 256]), None, "lie in [0, 255]"),
        (json_request(data=[1, 2, 3, 0.5]), None, "must be integers"),
        (json_request(), None, "neither `data` nor binary_data_size"),
        (json_request(parameters={"binary_data_size": 4}), None, "no Inference-Header"),
        (json_request(data=[1, 2, 3, 4]), "12x", "not a byte count"),
        (json_request(data=[1, 2, 3, 4]), "100000", "longer than the"),
    ],
)
def test_a_broken_request_says_what_is_wrong(body: bytes, length: str | None, says: str) -> None:
    with pytest.raises(TensorError) as raised:
        read_request(body, length)
    assert says in str(raised.value) and raised.value.status == 400


def test_binary_sizes_must_match_the_data_sent() -> None:
    array = np.arange(12, dtype=np.uint8).reshape(1, 3, 4)
    body, length = client_request(array, "UINT8", True)
    assert length is not None
    with pytest.raises(TensorError, match="overruns the body: only 11 bytes"):
        read_request(body[:-1], length)
    with pytest.raises(TensorError, match="1 bytes after the JSON header belong to no input"):
        read_request(body + b"\0", length)
    header = json.loads(body[: int(length)])
    header["inputs"][0]["shape"] = [1, 2, 4]
    header["inputs"][0]["parameters"]["binary_data_size"] = 8
    short = json.dumps(header).encode()
    with pytest.raises(TensorError, match="4 bytes after the JSON header"):
        read_request(short + body[int(length) :], str(len(short)))
    header["inputs"][0]["parameters"]["binary_data_size"] = 12
    lying = json.dumps(header).encode()
    with pytest.raises(TensorError, match="disagrees with shape \\[1, 2, 4\\] of UINT8"):
        read_request(lying + body[int(length) :], str(len(lying)))


def test_gzip_and_deflate_bodies_inflate_within_the_limit() -> None:
    body = json_request(data=[1, 2, 3, 4])
    assert inflate(gzip.compress(body), "gzip", 1000) == body
    assert inflate(zlib.compress(body), "deflate", 1000) == body  # what tritonclient sends
    raw = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    assert inflate(raw.compress(body) + raw.flush(), "deflate", 1000) == body
    assert inflate(body, None, 1) == body  # no encoding: nothing to inflate or count
    bomb = gzip.compress(bytes(50 << 20))  # 50 MiB of zeros in about 50 KB
    with pytest.raises(BodyTooLarge, match="inflates past the 1048576 byte limit") as raised:
        inflate(bomb, "gzip", 1 << 20)
    assert raised.value.status == 413
    with pytest.raises(TensorError, match="truncated"):
        inflate(gzip.compress(body)[:-8], "gzip", 1000)
    with pytest.raises(TensorError, match="cannot be inflated"):
        inflate(b"not gzip at all", "gzip", 1000)
    with pytest.raises(TensorError, match="'br' is not supported"):
        inflate(body, "br", 1000)


def test_answers_read_back_through_the_client() -> None:
    scores = np.random.default_rng(5).random((2, 1, 3, 5)).astype(np.float32)
    mask = (scores >= 0.5).astype(np.uint8)
    threshold = np.array([0.5], dtype=np.float32)
    document = {"model_name": "m", "model_version": "v", "parameters": {"threshold": 0.5}}
    for binary in (True, False):
        outputs = [
            OutputTensor("probabilities", "FP32", scores, binary),
            OutputTensor("mask", "UINT8", mask, binary),
            OutputTensor("threshold", "FP32", threshold, False),
        ]
        body, length = encode_response(document, outputs)
        assert (length is not None) == binary
        result = triton.InferResult.from_response_body(body, header_length=length)
        assert np.array_equal(result.as_numpy("probabilities"), scores)  # bit for bit
        assert result.as_numpy("probabilities").dtype == np.float32
        assert np.array_equal(result.as_numpy("mask"), mask)
        assert result.as_numpy("threshold").tolist() == [0.5]
        assert result.get_response()["parameters"] == {"threshold": 0.5}
