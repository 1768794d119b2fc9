"""Inference: masks, probability maps and overlays for an uploaded image.

Each route parses the request, calls the segment use case (`service.usecases.segment`) with one
of the named encode stages below, and answers with what it encoded and the threshold headers.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, File, Query, Response, UploadFile

from service.api.dependencies import ModelDep, ServicesDep
from service.api.openapi import binary_content
from service.api.problems import ProblemError, problem_responses
from service.api.routes.class_answers import (
    ClassQuery,
    MaskFormat,
    check_class,
    class_encoder,
    class_maps_encoder,
    class_overlay_encoder,
    class_thresholds_text,
    per_class_text,
)
from service.api.schemas import MaskJson
from service.api.spool import SpoolingRoute
from service.api.uploads import UploadedImage
from service.container import Services
from service.inference import encoding
from service.inference.registry import ServedModel
from service.usecases.segment import Encode, Segmentation, segment_encoded

router = APIRouter(prefix="/v1/models/{model}", tags=["inference"], route_class=SpoolingRoute)

ImageFile = Annotated[
    UploadFile, File(description="PNG, JPEG, TIFF, BMP or GIF; grey, RGB, RGBA, 16-bit, palette.")
]
ThresholdQuery = Annotated[
    float | None,
    Query(description="Use this threshold for this request only (source `request`)."),
]
PROBLEMS = problem_responses(404, 413, 422, 503)


# The encode stages: each turns a segmentation into a response body, in the inference worker.


def mask_png(result: Segmentation) -> bytes:
    """The mask as an 8-bit PNG, 255 in the foreground."""
    return encoding.mask_png(result.mask)


def mask_json(result: Segmentation) -> bytes:
    """The mask as JSON: COCO RLE, its size, the threshold and the foreground fraction."""
    height, width = result.mask.shape
    answer = MaskJson(
        width=width,
        height=height,
        threshold=result.cut.value,
        threshold_source=result.cut.source,
        foreground_fraction=result.foreground_fraction,
        rle=encoding.coco_rle(result.mask),
    )
    return answer.model_dump_json().encode()


def scores_npy(result: Segmentation) -> bytes:
    """The head's output as a float32 .npy array."""
    return encoding.probabilities_npy(result.scores)


def scores_png16(result: Segmentation) -> bytes:
    """The head's output in [0, 1] as a 16-bit PNG."""
    return encoding.probabilities_png16(result.scores)


def overlay_png(result: Segmentation) -> bytes:
    """The input with its mask tinted and outlined, as an RGB PNG."""
    return encoding.overlay_png(result.image, result.mask)


async def _answer(
    services: Services,
    served: ServedModel,
    image: UploadFile,
    encode: Encode[bytes],
    media_type: str,
    threshold: float | None = None,
) -> Response:
    """Segment the uploaded image, encode it with `encode`, and answer with the cut's headers."""
    upload = UploadedImage(image, services.settings.max_upload_bytes)
    encoded = await segment_encoded(services, served, upload, encode, threshold)
    headers = threshold_headers(encoded.segmentation)
    return Response(encoded.body, media_type=media_type, headers=headers)


def threshold_headers(result: Segmentation) -> dict[str, str]:
    """The X-Threshold* headers of an answer (per class for a multi-class model), as /mask sends."""
    if result.multi_class:
        headers = {
            "X-Threshold": class_thresholds_text(result),
            "X-Threshold-Source": per_class_text(result.classes, [c.source for c in result.cuts]),
        }
        stale = any(cut.stale for cut in result.cuts)
    else:
        cut = result.cut
        headers = {"X-Threshold": repr(cut.value), "X-Threshold-Source": cut.source}
        stale = cut.stale
        # Only a binary cut carries a guarantee (a multi-class report has none).
        if cut.guarantee is not None:
            headers["X-Threshold-Guarantee"] = cut.guarantee
    if stale:
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
        MaskFormat,
        Query(
            description="png: 8-bit 0/255 image; json: COCO RLE (multi-class: one per class); "
            "labels (multi-class only): 8-bit label PNG, see the description."
        ),
    ] = "png",
    threshold: ThresholdQuery = None,
    class_: ClassQuery = None,
) -> Response:
    """Foreground where the head's output >= the threshold (active, or `?threshold=`).

    Multi-class models (`mode` multiclass): a pixel takes class k when p_k >= t_k and p_k is
    the largest among the classes that pass; otherwise it is background. `?class=name` answers
    that class's binary mask (pixels labelled `name`), `?format=labels` the label image
    (0 background, k the k-th class in `classes` order) and `?format=json` one RLE per class.
    Multilabel models: each class is its own map at its own threshold (masks may overlap);
    `?format=labels` is a bit field (bit k-1 set where class k passes, at most 8 classes).
    `?threshold=` applies to every class. X-Threshold names each class's threshold, as
    `nucleus=0.41;debris=0.63`.
    """
    check_class(served, class_, format)
    if served.multi_class:
        encode, media_type = class_encoder(format, class_)
        return await _answer(services, served, image, encode, media_type, threshold)
    if format == "png":
        return await _answer(services, served, image, mask_png, "image/png", threshold)
    return await _answer(services, served, image, mask_json, "application/json", threshold)


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
    class_: ClassQuery = None,
) -> Response:
    """The head's output for every pixel: probabilities for sigmoid heads, scores otherwise.

    Multi-class models: npy is float32 (K, H, W), the classes in `classes` order (a multiclass
    model's softmax shares without the background's); `?class=name` answers that class's (H, W).
    """
    check_class(served, class_)
    if format == "png" and not served.is_probability:
        raise ProblemError(
            422,
            "Output is not a probability",
            f"model {served.name!r} has a {served.head} head whose output is not bounded to "
            "[0, 1], so it cannot be written as a 16-bit PNG; ask for format=npy",
            slug="not-a-probability",
        )
    if served.multi_class:
        encode, media_type = class_maps_encoder(served, format, class_)
        return await _answer(services, served, image, encode, media_type)
    if format == "png":
        return await _answer(services, served, image, scores_png16, "image/png")
    return await _answer(services, served, image, scores_npy, "application/x-npy")


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
    class_: ClassQuery = None,
) -> Response:
    """A PNG of the input with the mask tinted and outlined, for a person to look at.

    Multi-class models: each class in its own colour (`?class=name`: that class only).
    """
    check_class(served, class_)
    if served.multi_class:
        encode = class_overlay_encoder(class_)
        return await _answer(services, served, image, encode, "image/png", threshold)
    return await _answer(services, served, image, overlay_png, "image/png", threshold)
