"""Inference: masks, probability maps and overlays for an uploaded image."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Literal, NamedTuple, TypeVar

import numpy as np
from fastapi import APIRouter, File, Query, Response, UploadFile

from model.inference.predict import Prediction
from service.api.dependencies import ModelDep, ServicesDep
from service.api.openapi import binary_content
from service.api.problems import ProblemError, problem_responses
from service.api.routes.thresholds import check_threshold
from service.api.schemas import MaskJson
from service.api.spool import SpoolingRoute
from service.api.uploads import decode_image
from service.container import Services
from service.inference import encoding
from service.inference.registry import ServedModel
from service.state.errors import StoreUnavailable

router = APIRouter(prefix="/v1/models/{model}", tags=["inference"], route_class=SpoolingRoute)

ImageFile = Annotated[
    UploadFile, File(description="PNG, JPEG, TIFF, BMP or GIF; grey, RGB, RGBA, 16-bit, palette.")
]
ThresholdQuery = Annotated[
    float | None,
    Query(description="Use this threshold for this request only (source `request`)."),
]
PROBLEMS = problem_responses(404, 413, 422, 503)
T = TypeVar("T")


class Cut(NamedTuple):
    """The threshold a request is answered with, and where it came from."""

    value: float
    source: str  # default, calibration, manual or request
    stale: bool = False  # the store is failing: the active threshold is the last one known


async def _infer(
    services: Services,
    served: ServedModel,
    image: UploadFile,
    threshold: float | None,
    then: Callable[[np.ndarray, Prediction, Cut], T],
) -> tuple[T, Cut]:
    """Decode, settle the threshold and run the model; `then(input, prediction, cut)` runs in
    the inference worker right after the pass, so encoding costs no extra thread hand-off.
    """
    if threshold is not None:
        check_threshold(served, threshold)
    pixels = await decode_image(image, served, services.settings)
    active = await services.active_threshold_async(served)
    if threshold is not None:
        cut = Cut(threshold, "request")
    else:
        cut = Cut(active.value, active.source, active.stale)
    # Drift watches every served image against the active calibration, whatever the cut.
    try:
        observe = services.drift.watch(served.name, active.calibration_id)
    except StoreUnavailable:  # a new calibration's profile is unreadable now: serve unwatched
        observe = _unwatched
    result = await services.engine.run(served, pixels, lambda p: then(pixels, observe(p), cut))
    return result, cut


def _unwatched(prediction: Prediction) -> Prediction:
    return prediction


def _threshold_headers(cut: Cut) -> dict[str, str]:
    headers = {"X-Threshold": repr(cut.value), "X-Threshold-Source": cut.source}
    if cut.stale:
        headers["X-Threshold-Stale"] = "true"
    return headers


@router.post(
    "/mask",
    summary="Binary mask of an image",
    response_model=MaskJson,
    responses={
        200: {**binary_content("image/png"), "description": "PNG (0/255) or JSON with COCO RLE"},
        **PROBLEMS,
    },
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

    def encode(_: np.ndarray, prediction: Prediction, cut: Cut) -> bytes:
        foreground = prediction.output >= cut.value
        if format == "png":
            return encoding.mask_png(foreground)
        height, width = foreground.shape
        return (
            MaskJson(
                width=width,
                height=height,
                threshold=cut.value,
                threshold_source=cut.source,  # type: ignore[arg-type]
                foreground_fraction=float(foreground.mean()),
                rle=encoding.coco_rle(foreground),
            )
            .model_dump_json()
            .encode()
        )

    body, cut = await _infer(services, served, image, threshold, encode)
    media_type = "image/png" if format == "png" else "application/json"
    return Response(body, media_type=media_type, headers=_threshold_headers(cut))


@router.post(
    "/probabilities",
    summary="The head's raw output map",
    response_class=Response,
    responses={
        200: {
            **binary_content("application/x-npy", "image/png"),
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
    write = encoding.probabilities_png16 if format == "png" else encoding.probabilities_npy
    body, cut = await _infer(services, served, image, None, lambda _, p, __: write(p.output))
    media_type = "image/png" if format == "png" else "application/x-npy"
    return Response(body, media_type=media_type, headers=_threshold_headers(cut))


@router.post(
    "/overlay",
    summary="The image with its mask drawn over it",
    response_class=Response,
    responses={200: {**binary_content("image/png"), "description": "RGB PNG"}, **PROBLEMS},
)
async def overlay(
    services: ServicesDep,
    served: ModelDep,
    image: ImageFile,
    threshold: ThresholdQuery = None,
) -> Response:
    """A PNG of the input with the mask tinted and outlined, for a person to look at."""
    png, cut = await _infer(
        services,
        served,
        image,
        threshold,
        lambda pixels, p, cut: encoding.overlay_png(pixels, p.output >= cut.value),
    )
    return Response(png, media_type="image/png", headers=_threshold_headers(cut))
