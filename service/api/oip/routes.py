"""Open Inference Protocol v2 routes: health, metadata and inference beside v1, on one engine.

Each route parses, checks everything it can before a pixel reaches the model, calls
`segment_batch`, and encodes; every error is `{"error": ...}` (`service.api.oip.errors`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import numpy as np
from anyio import to_thread
from fastapi import APIRouter, Depends, Path, Request, Response

from model.data.decoding import image_from_array
from model.errors import DatasetError
from service.api.dependencies import ServicesDep
from service.api.errors import DOMAIN_ERRORS
from service.api.oip.body import read_body
from service.api.oip.compression import MIN_BYTES, chosen_encoding, compress
from service.api.oip.errors import OipError, from_error
from service.api.oip.parameters import (
    OUTPUTS,
    answer_document,
    output_data,
    request_class,
    request_threshold,
    wanted_outputs,
)
from service.api.oip.schemas import (
    ModelMetadata,
    ModelReady,
    OipErrorBody,
    ServerLive,
    ServerMetadata,
    ServerReady,
    TensorMetadata,
)
from service.api.oip.segmenting import segment_batch
from service.api.oip.tensors import (
    BYTES,
    InferenceRequest,
    OutputTensor,
    Tensor,
    TensorError,
    encode_response,
    inflate,
    read_request,
)
from service.api.problems import ProblemError
from service.container import Services
from service.inference.errors import ModelUnavailable
from service.inference.registry import ServedModel
from service.settings import Settings
from service.usecases.segment import INLINE_PIXELS, ImageBytes, decode

router = APIRouter(prefix="/v2", tags=["oip"])

IMAGE = "image"
PIXEL_TYPES = ("UINT8", "UINT16", "FP32")
EXTENSIONS = ["binary_tensor_data", "parameters"]
# Past this many body bytes, parsing and encoding leave the event loop (JSON of a 2048 px
# image is ~30 MB of text): the loop keeps answering other requests meanwhile.
INLINE_BYTES = 1 << 20
HEADER_ALLOWANCE = 64 * 1024  # the JSON header beside the tensors, as multipart framing is
T = TypeVar("T")

ModelName = Annotated[str, Path(description="Model name: a checkpoint's file stem.")]
INFER_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "An InferenceRequest as JSON (no Content-Type needed), or with the "
        "binary tensor extension: the JSON, then each input's raw little-endian row-major "
        "bytes in order (`parameters.binary_data_size` per input; the "
        "`Inference-Header-Content-Length` header gives the JSON's length). "
        "`Content-Encoding: gzip` or `deflate` bodies are inflated.",
        "content": {
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "application/json": {"schema": {"$ref": "#/components/schemas/InferenceRequest"}},
        },
    }
}
INFER_ANSWERS: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "An InferenceResponse; with binary outputs, the JSON then each binary "
        "output's raw bytes (`Inference-Header-Content-Length` gives the JSON's length)",
        "content": {
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "application/json": {"schema": {"$ref": "#/components/schemas/InferenceResponse"}},
        },
    },
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries of `/v2` errors."""
    return {s: {"model": OipErrorBody, "description": '`{"error": ...}`'} for s in statuses}


def _version(request: Request) -> str | None:
    """The `{version}` of a `.../versions/{version}/...` path; None on the plain one."""
    return request.path_params.get("version")


PathVersion = Annotated[str | None, Depends(_version)]
VERSION_PARAMETER: dict[str, Any] = {
    "name": "version",
    "in": "path",
    "required": True,
    "description": "The model's version: its checkpoint's SHA-256 (any other is a 404).",
    "schema": {"type": "string"},
}
E = TypeVar("E", bound=Callable[..., Any])


def model_route(
    method: str, tail: str, names: tuple[str, str], summary: str, **options: Any
) -> Callable[[E], E]:
    """Serve an endpoint at `/models/{model}{tail}` and `/models/{model}/versions/{version}{tail}`.

    The protocol gives each model path both forms; one endpoint answers both, reading the
    version (None on the plain form) from `PathVersion`.
    """
    plain, versioned = names
    extra = options.pop("openapi_extra", {})

    def declare(endpoint: E) -> E:
        router.add_api_route(
            f"/models/{{model}}{tail}",
            endpoint,
            methods=[method],
            name=plain,
            summary=summary,
            openapi_extra=extra or None,
            **options,
        )
        router.add_api_route(
            f"/models/{{model}}/versions/{{version}}{tail}",
            endpoint,
            methods=[method],
            name=versioned,
            summary=f"{summary}, of a version",
            openapi_extra={**extra, "parameters": [VERSION_PARAMETER]},
            **options,
        )
        return endpoint

    return declare


@router.get("", name="server-metadata", summary="Server metadata")
async def server_metadata(request: Request) -> ServerMetadata:
    """Name, version and the protocol extensions served (`binary_tensor_data`)."""
    return ServerMetadata(
        name="unet-segmentation-service", version=request.app.version, extensions=EXTENSIONS
    )


@router.get("/health/live", name="server-live", summary="Liveness")
async def server_live() -> ServerLive:
    """200 while the process serves."""
    return ServerLive(live=True)


@router.get("/health/ready", name="server-ready", summary="Readiness", responses=errors(400))
async def server_ready(request: Request) -> ServerReady:
    """200 once every loadable model is warm, as `/readyz`; 400 (not ready) before."""
    services: Services | None = getattr(request.app.state, "services", None)
    if services is None or not services.engine.ready:
        raise OipError(400, "not ready: the models are still loading or warming up")
    return ServerReady(ready=True)


@model_route(
    "GET",
    "",
    ("model-metadata", "model-version-metadata"),
    "Model metadata",
    responses=errors(404, 503),
    response_model_exclude_none=True,
)
async def model_metadata(
    services: ServicesDep, model: ModelName, version: PathVersion
) -> ModelMetadata:
    """The model's versions, platform and tensors; -1 marks a dimension of any size."""
    return _metadata(services, model, version)


@model_route(
    "GET",
    "/ready",
    ("model-ready", "model-version-ready"),
    "Model readiness",
    responses=errors(400, 404, 503),
)
async def model_ready(services: ServicesDep, model: ModelName, version: PathVersion) -> ModelReady:
    """200 once the model is warm; 400 (not ready) before."""
    served = _served(services, model, version)
    if not services.engine.ready or services.engine.backend(served.name) is None:
        raise OipError(400, f"model {model!r} is not ready: it is still warming up")
    return ModelReady(name=served.name, ready=True)


@model_route(
    "POST",
    "/infer",
    ("infer", "infer-version"),
    "Segment images",
    response_class=Response,
    openapi_extra=INFER_BODY,
    responses={**INFER_ANSWERS, **errors(400, 404, 408, 413, 503, 507)},
)
async def infer(
    request: Request, services: ServicesDep, model: ModelName, version: PathVersion
) -> Response:
    """Masks, probabilities and the threshold for the images of input `image`."""
    return await _infer(request, services, model, version)


def _served(services: Services, model: str, version: str | None) -> ServedModel:
    failure = services.registry.failure(model)
    if failure is not None:
        raise from_error(ModelUnavailable(model, failure))
    served = services.registry.get(model)
    if served is None:
        raise OipError(
            404,
            f"no model named {model!r}; this service has {', '.join(services.registry.names())}",
        )
    if version is not None and version != served.digest:
        raise OipError(
            404, f"model {model!r} has no version {version!r}; it serves version {served.digest}"
        )
    return served


def _metadata(services: Services, model: str, version: str | None) -> ModelMetadata:
    served = _served(services, model, version)
    image_shape = [-1, -1, -1] if served.in_channels == 1 else [-1, -1, -1, served.in_channels]
    k = len(served.classes) or 1
    planes = [-1, k, -1, -1]
    # A multi-class model's planes are its classes, in this order (`class` picks one).
    named = {"classes": ",".join(served.classes)} if served.multi_class else None
    return ModelMetadata(
        name=served.name,
        versions=[served.digest],
        platform=services.engine.backend(served.name) or "starting",
        inputs=[
            TensorMetadata(
                name=IMAGE,
                datatype="UINT8",
                shape=image_shape,
                parameters={
                    "datatypes": "UINT8, UINT16 or FP32 pixels; or BYTES, each element an "
                    "encoded PNG, TIFF, JPEG, BMP or GIF file",
                    "shapes": "[N, H, W] or [N, H, W, C]; BYTES: [N]",
                },
            )
        ],
        outputs=[
            TensorMetadata(name="probabilities", datatype="FP32", shape=planes, parameters=named),
            TensorMetadata(name="mask", datatype="UINT8", shape=planes, parameters=named),
            TensorMetadata(name="threshold", datatype="FP32", shape=[k], parameters=named),
        ],
    )


async def _infer(
    request: Request, services: ServicesDep, model: str, version: str | None
) -> Response:
    settings = services.settings
    try:
        served = _served(services, model, version)
        body = await read_body(request)
        parsed = await _off_loop(len(body) > INLINE_BYTES, lambda: _parse(request, body, settings))
        tensor = _image_input(parsed)
        threshold = request_threshold(parsed, served)
        cls = request_class(parsed, served)
        wanted = wanted_outputs(parsed)
        images = await _images(tensor, served, settings)
        results = await segment_batch(services, served, images, threshold, cls)
        outputs = [
            OutputTensor(name, OUTPUTS[name], output_data(name, results), binary)
            for name, binary in wanted
        ]
        document = answer_document(served, parsed, results[0])
        size = sum(output.data.size for output in outputs if not output.binary)
        answer, header_length = await _off_loop(
            size > INLINE_PIXELS, lambda: encode_response(document, outputs)
        )
        encoding = chosen_encoding(request.headers.get("accept-encoding"))
        if len(answer) < MIN_BYTES:
            encoding = None
        elif encoding is not None:
            plain, chosen = answer, encoding
            answer = await _off_loop(len(plain) > INLINE_BYTES, lambda: compress(plain, chosen))
    except TensorError as error:
        return OipError(error.status, str(error)).response()
    except OipError as error:
        return error.response()
    except (ProblemError, *DOMAIN_ERRORS) as error:
        return from_error(error).response()
    first = results[0]
    headers = {
        "X-Threshold": first.threshold_text,
        "X-Threshold-Source": first.provenance.source,
        "Vary": "Accept-Encoding",
    }
    if encoding is not None:
        headers["Content-Encoding"] = encoding
    if first.provenance.stale:
        headers["X-Threshold-Stale"] = "true"
    if header_length is None:
        return Response(answer, media_type="application/json", headers=headers)
    headers["Inference-Header-Content-Length"] = str(header_length)
    return Response(answer, media_type="application/octet-stream", headers=headers)


async def _off_loop(heavy: bool, work: Callable[[], T]) -> T:
    """`work()` in a worker thread when `heavy`, else here (a thread hand-off costs more)."""
    if not heavy:
        return work()
    return await to_thread.run_sync(work)


def _parse(request: Request, body: bytes, settings: Settings) -> InferenceRequest:
    limit = settings.max_upload_bytes + HEADER_ALLOWANCE
    data = inflate(body, request.headers.get("content-encoding"), limit)
    return read_request(data, request.headers.get("inference-header-content-length"))


def _image_input(parsed: InferenceRequest) -> Tensor:
    names = [tensor.name for tensor in parsed.inputs]
    if names != [IMAGE]:
        raise OipError(400, f"the model takes one input, 'image'; the request has {names}")
    tensor = parsed.inputs[0]
    if tensor.datatype not in (*PIXEL_TYPES, BYTES):
        raise OipError(
            400,
            f"input 'image' has datatype {tensor.datatype}; send UINT8, UINT16 or FP32 pixels, "
            "or BYTES holding encoded image files",
        )
    return tensor


def _check_count(count: int, settings: Settings) -> None:
    if count == 0:
        raise OipError(400, "input 'image' holds no image (N = 0)")
    if count > settings.queue_size:
        raise OipError(
            400,
            f"input 'image' holds {count} images; a request may hold at most "
            f"{settings.queue_size}, the queue's size (UNET_QUEUE_SIZE)",
        )


async def _images(tensor: Tensor, served: ServedModel, settings: Settings) -> list[np.ndarray]:
    """Each image of `tensor` as the model's (C, H, W) input, decoded as v1 uploads are."""
    shape = tensor.shape
    if tensor.datatype == BYTES:
        if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
            raise OipError(400, f"BYTES input 'image' has shape {list(shape)}; give [N] files")
        _check_count(shape[0], settings)
        files = tensor.data.ravel()
        images = [
            await decode(served, ImageBytes(files[i], f"image[{i}]"), settings.max_image_pixels)
            for i in range(len(files))
        ]
        if len({image.shape[1:] for image in images}) > 1:
            sizes = sorted({f"{i.shape[2]} x {i.shape[1]}" for i in images})
            raise OipError(
                400,
                f"the files have different sizes ({', '.join(sizes)}); one request "
                "answers one [N, 1, H, W] tensor, so send them in separate requests",
            )
        return images
    if len(shape) not in (3, 4):
        raise OipError(
            400, f"input 'image' has shape {list(shape)}; give [N, H, W] or [N, H, W, C]"
        )
    _check_count(shape[0], settings)
    height, width = shape[1], shape[2]
    if height == 0 or width == 0 or (len(shape) == 4 and not 1 <= shape[3] <= 4):
        raise OipError(
            400, f"input 'image' has shape {list(shape)}: H and W must be at least 1, C 1 to 4"
        )
    if height * width > settings.max_image_pixels:
        raise OipError(
            413,
            f"the images are {width} x {height} = {height * width} pixels, over the "
            f"{settings.max_image_pixels} pixel limit (UNET_MAX_IMAGE_PIXELS)",
        )

    def convert() -> list[np.ndarray]:
        return [
            # Writable copies: the tensor is a read-only view of the request body.
            image_from_array(np.array(tensor.data[i]), served.input, f"image[{i}]")
            for i in range(shape[0])
        ]

    try:
        return await _off_loop(math.prod(shape) > INLINE_PIXELS, convert)
    except DatasetError as error:
        raise OipError(400, str(error)) from None
