"""Inference: masks, probability maps and overlays for an uploaded image."""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
from anyio import to_thread
from fastapi import APIRouter, File, Query, Response, UploadFile

from model.predict import Prediction
from service import encoding
from service.container import Services
from service.dependencies import ModelDep, ServicesDep
from service.problems import ProblemError, problem_responses
from service.registry import ServedModel
from service.routes.thresholds import check_threshold
from service.schemas import MaskJson
from service.uploads import decode_image

router = APIRouter(prefix="/v1/models/{model}", tags=["inference"])

ImageFile = Annotated[
    UploadFile, File(description="PNG, JPEG, TIFF, BMP or GIF; grey, RGB, RGBA, 16-bit, palette.")
]
ThresholdQuery = Annotated[
    float | None,
    Query(description="Use this threshold for this request only (source `request`)."),
]
PROBLEMS = problem_responses(404, 413, 422, 503)
PNG = {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}}


async def _infer(
    services: Services, served: ServedModel, image: UploadFile, threshold: float | None
) -> tuple[np.ndarray, Prediction, float, str]:
    """Decode, run the model and settle the threshold: (input, prediction, threshold, source)."""
    if threshold is not None:
        check_threshold(served, threshold)
    pixels = await decode_image(image, served, services.settings)
    prediction = await services.engine.predict(served, pixels)
    if threshold is not None:
        return pixels, prediction, threshold, "request"
    active = services.active_threshold(served)
    return pixels, prediction, active.value, active.source


def _threshold_headers(threshold: float, source: str) -> dict[str, str]:
    return {"X-Threshold": repr(threshold), "X-Threshold-Source": source}


@router.post(
    "/mask",
    summary="Binary mask of an image",
    response_model=MaskJson,
    responses={200: {**PNG, "description": "PNG (0/255) or JSON with COCO RLE"}, **PROBLEMS},
)
async def mask(
    services: ServicesDep,
    served: ModelDep,
    image: ImageFile,
    format: Annotated[
        Literal["png", "json"], Query(description="png: 8-bit 0/255 image; json: COCO RLE.")
    ] = "png",
    threshold: ThresholdQuery = None,
) -> Response:
    """Foreground where the head's output >= the threshold (active, or `?threshold=`)."""
    _, prediction, used, source = await _infer(services, served, image, threshold)
    foreground = prediction.output >= used
    headers = _threshold_headers(used, source)
    if format == "json":
        height, width = foreground.shape
        body = MaskJson(
            width=width,
            height=height,
            threshold=used,
            threshold_source=source,  # type: ignore[arg-type]
            foreground_fraction=float(foreground.mean()),
            rle=await to_thread.run_sync(encoding.coco_rle, foreground),
        )
        return Response(body.model_dump_json(), media_type="application/json", headers=headers)
    png = await to_thread.run_sync(encoding.mask_png, foreground)
    return Response(png, media_type="image/png", headers=headers)


@router.post(
    "/probabilities",
    summary="The head's raw output map",
    response_class=Response,
    responses={
        200: {
            "content": {
                "application/x-npy": {"schema": {"type": "string", "format": "binary"}},
                "image/png": {"schema": {"type": "string", "format": "binary"}},
            },
            "description": "float32 H x W .npy of the raw head output, or 16-bit PNG "
            "(value = round(p * 65535)) for heads whose output lies in [0, 1]",
        },
        **PROBLEMS,
    },
)
async def probabilities(
    services: ServicesDep,
    served: ModelDep,
    image: ImageFile,
    format: Annotated[
        Literal["npy", "png"],
        Query(description="npy: float32 array; png: 16-bit, only for heads in [0, 1]."),
    ] = "npy",
) -> Response:
    """The head's output for every pixel: probabilities for sigmoid heads, scores otherwise."""
    if format == "png" and not served.is_probability:
        raise ProblemError(
            422,
            "Output is not a probability",
            f"model {served.name!r} has a {served.head} head whose output is not bounded to "
            "[0, 1], so it cannot be written as a 16-bit PNG; ask for format=npy",
            slug="not-a-probability",
        )
    _, prediction, used, source = await _infer(services, served, image, None)
    headers = _threshold_headers(used, source)
    if format == "png":
        png = await to_thread.run_sync(encoding.probabilities_png16, prediction.output)
        return Response(png, media_type="image/png", headers=headers)
    npy = await to_thread.run_sync(encoding.probabilities_npy, prediction.output)
    return Response(npy, media_type="application/x-npy", headers=headers)


@router.post(
    "/overlay",
    summary="The image with its mask drawn over it",
    response_class=Response,
    responses={200: {**PNG, "description": "RGB PNG"}, **PROBLEMS},
)
async def overlay(
    services: ServicesDep,
    served: ModelDep,
    image: ImageFile,
    threshold: ThresholdQuery = None,
) -> Response:
    """A PNG of the input with the mask tinted and outlined, for a person to look at."""
    pixels, prediction, used, source = await _infer(services, served, image, threshold)
    png = await to_thread.run_sync(encoding.overlay_png, pixels, prediction.output >= used)
    return Response(png, media_type="image/png", headers=_threshold_headers(used, source))
