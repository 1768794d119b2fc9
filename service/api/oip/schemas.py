"""The Open Inference Protocol v2 documents, as the OpenAPI document publishes them."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

ParameterValue = bool | int | float | str


class OipErrorBody(BaseModel):
    """Every `/v2` error: a status code and this body."""

    error: str = Field(description="What went wrong, for a person to act on.")


class ServerMetadata(BaseModel):
    """`GET /v2`."""

    name: str
    version: str
    extensions: list[str] = Field(description="Protocol extensions the server supports.")


class ServerLive(BaseModel):
    """`GET /v2/health/live`: the status says it (Triton's clients read only that)."""

    live: bool = Field(description="Always true: a server that is not live does not answer.")


class ServerReady(BaseModel):
    """`GET /v2/health/ready`: 200 with this once every loadable model is warm."""

    ready: bool = Field(description="True; before, the answer is a 400 `{error}`.")


class ModelReady(BaseModel):
    """`GET /v2/models/{model}/ready`: 200 with this once the model is warm."""

    name: str
    ready: bool = Field(description="True; before, the answer is a 400 `{error}`.")


class TensorMetadata(BaseModel):
    """A tensor's name, datatype and shape; -1 marks a dimension of any size."""

    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Any] | None = Field(
        default=None, description="For `image`: every datatype and shape it accepts."
    )


class ModelMetadata(BaseModel):
    """`GET /v2/models/{model}`: the version is the checkpoint's SHA-256 digest."""

    name: str
    versions: list[str]
    platform: str = Field(description="What runs the model's passes: torch or onnxruntime.")
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class RequestInput(BaseModel):
    """An input tensor: `data` in JSON (flat or nested, row-major), or raw bytes after the JSON
    when `parameters.binary_data_size` is given (BYTES: base64 strings in JSON)."""

    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, ParameterValue] | None = None
    data: list[Any] | None = None


class RequestOutput(BaseModel):
    """An output the response should hold; `parameters.binary_data`: as raw bytes."""

    name: str
    parameters: dict[str, ParameterValue] | None = None


class InferenceRequest(BaseModel):
    """`POST .../infer`. Request `parameters`: `threshold` (this request only, source
    `request`) and `binary_data_output` (every output as raw bytes)."""

    id: str | None = None
    parameters: dict[str, ParameterValue] | None = None
    inputs: list[RequestInput]
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    """An output tensor: `data` flat in row-major order, or `parameters.binary_data_size`
    raw little-endian bytes after the JSON."""

    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, ParameterValue] | None = None
    data: list[Any] | None = None


class InferenceResponse(BaseModel):
    """The answer. `parameters`: `threshold`, `threshold_source` (default, calibration,
    manual or request), `calibration_id` (when one is active), `threshold_stale` and
    `drift_status` (ok, warn, alert or no_reference), as v1's X-Threshold headers say."""

    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, ParameterValue] | None = None
    outputs: list[ResponseOutput]
