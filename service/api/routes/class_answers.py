"""The encode stages and request checks of multi-class models' inference answers.

A multi-class model's `Segmentation` holds K maps and K cuts (`service.usecases.segment`); these
stages turn it into one class's mask or map, the label image, per-class RLE or a coloured
overlay. The checks run before the image is read, so a wrong `?class=` costs no model pass.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from typing import Annotated, Literal

import numpy as np
from fastapi import Query

from model.calibration import CalibrationError, Criterion
from service.api.class_schemas import ClassMask, ClassMasksJson
from service.api.problems import ProblemError
from service.inference import encoding
from service.inference.registry import ServedModel
from service.usecases.segment import Encode, Segmentation

MaskFormat = Literal["png", "json", "labels"]
ClassQuery = Annotated[
    str | None,
    Query(
        alias="class",
        description="Multi-class models: answer for this class only (one of the model's "
        "`classes`). Not for binary models.",
    ),
]
MAX_BIT_FIELD_CLASSES = 8  # a multilabel label PNG holds one bit per class in 8 bits


def check_class(served: ServedModel, name: str | None, format: str | None = None) -> None:
    """Refuse a `?class=` or `?format=labels` the model cannot answer (before any work)."""
    if not served.multi_class:
        if name is not None:
            raise ProblemError(
                422,
                "Not a multi-class model",
                f"model {served.name!r} is binary: it has one map and no classes; drop "
                f"class={name!r}",
                slug="not-multi-class",
            )
        if format == "labels":
            raise ProblemError(
                422,
                "Not a multi-class model",
                f"model {served.name!r} is binary, so it has no label image; ask for "
                "format=png or format=json",
                slug="not-multi-class",
            )
        return
    if name is not None and name not in served.classes:
        raise ProblemError(
            404,
            "Unknown class",
            f"model {served.name!r} has no class {name!r}; its classes are "
            f"{', '.join(served.classes)}",
            slug="unknown-class",
        )
    if format == "labels" and name is not None:
        raise ProblemError(
            422,
            "Labels are for every class",
            f"format=labels answers every class of model {served.name!r} at once; drop "
            f"class={name!r}, or ask for format=png for that class's mask",
            slug="labels-with-class",
        )
    too_many = served.mode == "multilabel" and len(served.classes) > MAX_BIT_FIELD_CLASSES
    if format == "labels" and too_many:
        raise ProblemError(
            422,
            "Too many classes for a label image",
            f"model {served.name!r} is multilabel with {len(served.classes)} classes; its label "
            f"image holds one bit per class, at most {MAX_BIT_FIELD_CLASSES}: ask for format=json",
            slug="too-many-classes",
        )


def per_class_text(names: Sequence[str], values: Sequence[float | str]) -> str:
    """One value per class as the X-Threshold* headers say them: `nucleus=0.41;debris=0.63`
    (a float by its repr, the shortest text that reads back exactly; a string as it is)."""
    return ";".join(
        f"{name}={value!r}" if isinstance(value, float) else f"{name}={value}"
        for name, value in zip(names, values, strict=True)
    )


def class_thresholds_text(result: Segmentation) -> str:
    """Each class's threshold as `nucleus=0.41;debris=0.63` (the X-Threshold header)."""
    return per_class_text(result.classes, [cut.value for cut in result.cuts])


def class_encoder(format: MaskFormat, name: str | None) -> tuple[Encode[bytes], str]:
    """The encode stage and media type of a multi-class mask answer."""
    if format == "labels":
        return labels_png, "image/png"
    if format == "json":
        return masks_json, "application/json"
    if name is None:
        return labels_png, "image/png"  # every class at once: the label image is the mask
    return functools.partial(class_mask_png, name), "image/png"


def class_maps_encoder(
    served: ServedModel, format: str, name: str | None
) -> tuple[Encode[bytes], str]:
    """The encode stage and media type of a multi-class probabilities answer."""
    if format == "png":
        if name is None:
            raise ProblemError(
                422,
                "One class per PNG",
                f"model {served.name!r} has {len(served.classes)} class maps and a 16-bit PNG "
                "holds one; add class=NAME, or ask for format=npy (every class)",
                slug="one-class-per-png",
            )
        return functools.partial(class_map_png16, name), "image/png"
    if name is None:
        return class_maps_npy, "application/x-npy"
    return functools.partial(class_map_npy, name), "application/x-npy"


def class_overlay_encoder(name: str | None) -> Encode[bytes]:
    """The encode stage of a multi-class overlay: every class, or class `name` only."""
    if name is None:
        return overlay_png
    return functools.partial(class_overlay_png, name)


def labels(result: Segmentation) -> np.ndarray:
    """The label image (H, W): multiclass by the rule; multilabel a bit field of passing classes."""
    if result.mode == "multiclass":
        return result.labels
    bits = (1 << np.arange(len(result.classes), dtype=np.uint16))[:, None, None]
    return (result.mask * bits).sum(axis=0).astype(np.uint8)


def labels_png(result: Segmentation) -> bytes:
    """The label image as an 8-bit PNG."""
    return encoding.labels_png(labels(result))


def class_mask_png(name: str, result: Segmentation) -> bytes:
    """Class `name`'s mask as an 8-bit PNG, 255 where the pixel is that class."""
    return encoding.mask_png(result.mask[result.class_index(name)])


def masks_json(result: Segmentation) -> bytes:
    """Every class's mask as COCO RLE with its threshold, in class order."""
    _, height, width = result.mask.shape
    masks = {
        name: ClassMask(
            threshold=cut.value,
            threshold_source=cut.source,
            foreground_fraction=float(mask.mean()),
            rle=encoding.coco_rle(mask),
        )
        for name, cut, mask in zip(result.classes, result.cuts, result.mask, strict=True)
    }
    answer = ClassMasksJson(
        width=width,
        height=height,
        mode=result.mode,  # type: ignore[arg-type]
        threshold=class_thresholds_text(result),
        classes=masks,
    )
    return answer.model_dump_json().encode()


def class_maps_npy(result: Segmentation) -> bytes:
    """Every class's map as float32 (K, H, W) .npy."""
    return encoding.class_maps_npy(result.scores)


def class_map_npy(name: str, result: Segmentation) -> bytes:
    """Class `name`'s map as float32 (H, W) .npy."""
    return encoding.probabilities_npy(result.scores[result.class_index(name)])


def class_map_png16(name: str, result: Segmentation) -> bytes:
    """Class `name`'s map in [0, 1] as a 16-bit PNG."""
    return encoding.probabilities_png16(result.scores[result.class_index(name)])


def overlay_png(result: Segmentation) -> bytes:
    """The input with each class's mask in its own colour."""
    return encoding.class_overlay_png(result.image, result.mask)


def class_overlay_png(name: str, result: Segmentation) -> bytes:
    """The input with class `name`'s mask in that class's colour."""
    index = result.class_index(name)
    only = np.zeros_like(result.mask)
    only[index] = result.mask[index]
    return encoding.class_overlay_png(result.image, only)


def class_criteria(
    served: ServedModel, text: str | None, default: Criterion
) -> dict[str, Criterion] | None:
    """Each class's criterion from the `class_params` form field; CalibrationError if unusable."""
    if text is None:
        return None
    if not served.multi_class:
        raise CalibrationError(
            f"model {served.name!r} is binary: it has no classes; drop class_params"
        )
    try:
        given = json.loads(text)
    except ValueError:
        given = None
    if not isinstance(given, dict) or not all(isinstance(v, dict) for v in given.values()):
        raise CalibrationError(
            'class_params must be a JSON object of objects, e.g. {"debris": {"strategy": '
            '"target_tpr", "target": 0.9}}'
        )
    unknown = [name for name in given if name not in served.classes]
    if unknown:
        raise CalibrationError(
            f"class_params names {', '.join(map(repr, unknown))}; model {served.name!r} has "
            f"the classes {', '.join(served.classes)}"
        )
    allowed = {"strategy", "target", "cost_fp", "cost_fn"}
    criteria = {}
    for name in served.classes:
        choice = given.get(name, {})
        extra = set(choice) - allowed
        if extra:
            raise CalibrationError(
                f"class_params[{name!r}] has {', '.join(sorted(extra))}; give only "
                f"{', '.join(sorted(allowed))}"
            )
        try:
            criteria[name] = Criterion(
                str(choice.get("strategy", default.strategy)).strip().lower(),
                choice.get("target", default.target if "strategy" not in choice else None),
                float(choice.get("cost_fp", default.cost_fp)),
                float(choice.get("cost_fn", default.cost_fn)),
            )
        except (TypeError, ValueError) as error:  # CalibrationError is a ValueError too
            raise CalibrationError(f"class_params[{name!r}]: {error}") from None
    return criteria
