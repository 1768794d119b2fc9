"""Open Inference Protocol v2 tensors: a request's JSON and binary parts in, numpy arrays out.

Pure functions over bytes, no HTTP: `inflate` undoes a gzip or deflate body within a size limit,
`read_request` parses the JSON header and the binary tensor extension's raw data that follows it
(`Inference-Header-Content-Length`, `binary_data_size`), and `encode_response` writes outputs as
JSON `data` or as raw little-endian row-major bytes after the JSON. Every broken request raises
`TensorError` saying what is wrong with it.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# The protocol's datatypes with a fixed width; BYTES elements carry their own length.
DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
BYTES = "BYTES"
CHUNK = 1 << 20


class TensorError(ValueError):
    """A request that breaks the protocol; the message says what to fix."""

    status = 400


class BodyTooLarge(TensorError):
    """A compressed body that inflates past the size limit."""

    status = 413


@dataclass(frozen=True)
class Tensor:
    """One input tensor: `data` has `shape`; BYTES data is an object array of `bytes`."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OutputRequest:
    """An output the request names; `binary` None: as the request's `binary_data_output` says."""

    name: str
    binary: bool | None


@dataclass(frozen=True)
class InferenceRequest:
    """A parsed inference request."""

    id: str | None
    inputs: list[Tensor]
    outputs: list[OutputRequest] | None  # None: every output
    parameters: dict[str, Any]

    @property
    def binary_outputs(self) -> bool:
        """The request-level `binary_data_output` parameter (default false)."""
        return self.parameters.get("binary_data_output") is True


@dataclass(frozen=True)
class OutputTensor:
    """One output tensor to send, as JSON `data` or as raw bytes after the JSON."""

    name: str
    datatype: str
    data: np.ndarray
    binary: bool


def inflate(body: bytes, encoding: str | None, limit: int) -> bytes:
    """`body` decompressed as its Content-Encoding says (gzip, deflate or none), at most `limit`
    bytes; BodyTooLarge past it, TensorError for an unknown encoding or broken data."""
    name = (encoding or "identity").strip().lower()
    if name == "identity":
        return body
    if name in ("gzip", "x-gzip"):
        wbits = 16 + zlib.MAX_WBITS
    elif name == "deflate":  # zlib's framing, as HTTP means it; raw deflate when there is none
        wbits = zlib.MAX_WBITS if body[:1] and body[0] & 0x0F == 8 else -zlib.MAX_WBITS
    else:
        raise TensorError(f"Content-Encoding {encoding!r} is not supported; send gzip or deflate")
    inflater = zlib.decompressobj(wbits)
    pieces, size, pending = [], 0, body
    try:
        while pending:
            # Bounded pieces: a small bomb never expands past the limit in memory.
            piece = inflater.decompress(pending, CHUNK)
            pending = inflater.unconsumed_tail
            size += len(piece)
            if size > limit:
                raise BodyTooLarge(
                    f"the {name} body inflates past the {limit} byte limit "
                    "(UNET_MAX_UPLOAD_BYTES); send less data per request"
                )
            pieces.append(piece)
            if inflater.eof:
                break
    except zlib.error as error:
        raise TensorError(f"the {name} body cannot be inflated: {error}") from None
    if not inflater.eof or inflater.unused_data:
        raise TensorError(f"the {name} body is truncated or has data after its end")
    return b"".join(pieces)


def read_request(body: bytes, header_length: str | None) -> InferenceRequest:
    """The inference request in `body`; `header_length`: its Inference-Header-Content-Length."""
    if header_length is None:
        header, rest = body, memoryview(b"")
    else:
        if not header_length.strip().isdigit():
            raise TensorError(
                f"Inference-Header-Content-Length {header_length!r} is not a byte count"
            )
        length = int(header_length)
        if length > len(body):
            raise TensorError(
                f"Inference-Header-Content-Length {length} is longer than the {len(body)} byte body"
            )
        header, rest = body[:length], memoryview(body)[length:]
    document = _json(header, header_length is None)
    inputs_field = document.get("inputs")
    if not isinstance(inputs_field, list) or not inputs_field:
        raise TensorError("the request has no `inputs`: give a list of input tensors")
    inputs, offset = [], 0
    for position, entry in enumerate(inputs_field):
        tensor, used = _input(entry, position, rest, offset, header_length is not None)
        inputs.append(tensor)
        offset += used
    if offset != len(rest):
        raise TensorError(
            f"{len(rest) - offset} bytes after the JSON header belong to no input's "
            "binary_data_size; the sizes must add up to the data sent"
        )
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise TensorError("`id` must be a string")
    return InferenceRequest(
        request_id, inputs, _outputs(document.get("outputs")), _parameters(document, "request")
    )


def _json(header: bytes, no_length: bool) -> dict[str, Any]:
    try:
        document = json.loads(header)
    except (UnicodeDecodeError, ValueError) as error:
        hint = (
            "; a body with binary tensors needs the Inference-Header-Content-Length header"
            if no_length
            else ""
        )
        raise TensorError(f"the inference request is not JSON ({error}){hint}") from None
    if not isinstance(document, dict):
        raise TensorError("the inference request must be a JSON object")
    return document


def _parameters(entry: dict[str, Any], what: str) -> dict[str, Any]:
    parameters = entry.get("parameters", {})
    if not isinstance(parameters, dict):
        raise TensorError(f"`parameters` of the {what} must be a JSON object")
    return parameters


def _outputs(field_: Any) -> list[OutputRequest] | None:
    if field_ is None:
        return None
    if not isinstance(field_, list):
        raise TensorError("`outputs` must be a list of {name, parameters} objects")
    outputs = []
    for entry in field_:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise TensorError("each of `outputs` must be an object with a string `name`")
        binary = _parameters(entry, f"output {entry['name']!r}").get("binary_data")
        if binary is not None and not isinstance(binary, bool):
            raise TensorError(f"output {entry['name']!r}: binary_data must be true or false")
        outputs.append(OutputRequest(entry["name"], binary))
    return outputs


def _input(
    entry: Any, position: int, rest: memoryview, offset: int, has_length: bool
) -> tuple[Tensor, int]:
    """Input `position` and how many bytes of the binary part it took from `offset` on."""
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise TensorError(f"input {position} must be an object with a string `name`")
    name = entry["name"]
    datatype = entry.get("datatype")
    if datatype != BYTES and datatype not in DTYPES:
        raise TensorError(
            f"input {name!r}: datatype {datatype!r} is none of the protocol's "
            f"({', '.join([*DTYPES, BYTES])})"
        )
    shape_field = entry.get("shape")
    if not isinstance(shape_field, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape_field
    ):
        raise TensorError(f"input {name!r}: shape must be a list of non-negative integers")
    shape = tuple(shape_field)
    parameters = _parameters(entry, f"input {name!r}")
    size = parameters.get("binary_data_size")
    if size is None:
        if "data" not in entry:
            raise TensorError(f"input {name!r} has neither `data` nor binary_data_size")
        return Tensor(
            name, datatype, shape, _from_json(entry["data"], name, datatype, shape), parameters
        ), 0
    if "data" in entry:
        raise TensorError(f"input {name!r} has both `data` and binary_data_size; send one")
    if not has_length:
        raise TensorError(
            f"input {name!r} has binary_data_size but the request has no "
            "Inference-Header-Content-Length header saying where its JSON ends"
        )
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise TensorError(f"input {name!r}: binary_data_size must be a non-negative integer")
    if offset + size > len(rest):
        raise TensorError(
            f"input {name!r}: binary_data_size {size} overruns the body: only "
            f"{len(rest) - offset} bytes follow for it"
        )
    raw = rest[offset : offset + size]
    return Tensor(name, datatype, shape, _from_binary(raw, name, datatype, shape), parameters), size


def _from_binary(raw: memoryview, name: str, datatype: str, shape: tuple[int, ...]) -> np.ndarray:
    count = math.prod(shape)
    if datatype == BYTES:
        return _bytes_elements(raw, name, count).reshape(shape)
    dtype = DTYPES[datatype]
    if len(raw) != count * dtype.itemsize:
        raise TensorError(
            f"input {name!r}: binary_data_size {len(raw)} disagrees with shape "
            f"{list(shape)} of {datatype}, which takes {count * dtype.itemsize} bytes"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _bytes_elements(raw: memoryview, name: str, count: int) -> np.ndarray:
    """Elements serialised as a 4-byte little-endian length, then that many bytes."""
    elements, at = np.empty(count, dtype=object), 0
    for index in range(count):
        if at + 4 > len(raw):
            raise TensorError(f"input {name!r}: the binary data ends before element {index}")
        length = int.from_bytes(raw[at : at + 4], "little")
        at += 4
        if at + length > len(raw):
            raise TensorError(
                f"input {name!r}: element {index} says {length} bytes but only "
                f"{len(raw) - at} follow"
            )
        elements[index] = bytes(raw[at : at + length])
        at += length
    if at != len(raw):
        raise TensorError(
            f"input {name!r}: {len(raw) - at} bytes follow its {count} BYTES elements; "
            "the shape and the data disagree"
        )
    return elements


def _from_json(data: Any, name: str, datatype: str, shape: tuple[int, ...]) -> np.ndarray:
    if not isinstance(data, list):
        raise TensorError(f"input {name!r}: `data` must be a (flat or nested) JSON list")
    count = math.prod(shape)
    if datatype == BYTES:
        flat = np.asarray(data, dtype=object).ravel() if data else np.empty(0, dtype=object)
        if flat.size != count:
            raise TensorError(_count_error(name, shape, flat.size))
        try:  # JSON strings cannot hold a file's bytes: each element is base64
            decoded = [base64.b64decode(str(item), validate=True) for item in flat]
        except (binascii.Error, ValueError):
            raise TensorError(
                f"input {name!r}: BYTES elements in JSON must be base64 strings"
            ) from None
        elements = np.empty(count, dtype=object)
        elements[:] = decoded
        return elements.reshape(shape)
    try:
        array = np.asarray(data)
    except ValueError:
        raise TensorError(f"input {name!r}: `data` is ragged; nested lists must be even") from None
    if array.size != count:  # nested or flat, as Triton reads it: only the count must agree
        raise TensorError(_count_error(name, shape, array.size))
    return _cast(array, name, datatype).reshape(shape)


def _count_error(name: str, shape: tuple[int, ...], size: int) -> str:
    return (
        f"input {name!r}: shape {list(shape)} holds {math.prod(shape)} values but `data` has {size}"
    )


def _cast(array: np.ndarray, name: str, datatype: str) -> np.ndarray:
    dtype = DTYPES[datatype]
    if array.size == 0:
        return array.astype(dtype)
    if dtype.kind == "b":
        if array.dtype.kind != "b":
            raise TensorError(f"input {name!r}: BOOL data must be true or false")
        return array.astype(dtype)
    if dtype.kind in "iu":
        if array.dtype.kind not in "iu":
            raise TensorError(f"input {name!r}: {datatype} data must be integers")
        info = np.iinfo(dtype)
        if array.min() < info.min or array.max() > info.max:
            raise TensorError(f"input {name!r}: {datatype} values lie in [{info.min}, {info.max}]")
        return array.astype(dtype)
    if array.dtype.kind not in "iuf":
        raise TensorError(f"input {name!r}: {datatype} data must be numbers")
    return array.astype(dtype)


def encode_response(
    document: dict[str, Any], outputs: list[OutputTensor]
) -> tuple[bytes, int | None]:
    """The response body and, when some output is binary, the length of its JSON header.

    `document` holds everything but `outputs` (model_name, model_version, id, parameters).
    """
    entries, blobs = [], []
    for output in outputs:
        entry: dict[str, Any] = {
            "name": output.name,
            "datatype": output.datatype,
            "shape": list(output.data.shape),
        }
        if output.binary:
            raw = np.ascontiguousarray(output.data, dtype=DTYPES[output.datatype])
            entry["parameters"] = {"binary_data_size": raw.nbytes}
            blobs.append(raw.data.cast("B"))
        else:
            entry["data"] = output.data.ravel().tolist()
        entries.append(entry)
    header = json.dumps({**document, "outputs": entries}, separators=(",", ":")).encode()
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)
