"""Objects in an image: a label image, the objects table (JSON, CSV) or QuPath-ready GeoJSON.

Parse the query, call the instances use case (`service.usecases.instances`) with the format's
encode stage, answer with `/mask`'s threshold headers plus the object count. Multi-class models:
`?class=` as `/mask` takes it (the checks of `class_answers`); without it every class's objects,
each with its class, except the label image, which is one class's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response

from model.inference.instance_formats import (
    DEFAULT_COLOR,
    collection_json,
    csv_table,
    feature_texts,
    labels_file,
)
from model.inference.instances import DEFAULT_SPLIT, InstanceOptions, ObjectRow, Split
from service.api.dependencies import ModelDep, ServicesDep
from service.api.instance_schemas import ClassObjectsJson, CountRangeJson, InstancesJson, ObjectJson
from service.api.openapi import binary_content
from service.api.problems import ProblemError
from service.api.routes.class_answers import ClassQuery, check_class
from service.api.routes.inference import PROBLEMS, ImageFile, ThresholdQuery, threshold_headers
from service.api.spool import SpoolingRoute
from service.api.uploads import UploadedImage
from service.inference.encoding import CLASS_COLOURS
from service.inference.registry import ServedModel
from service.usecases.instances import Objects, find_objects
from service.usecases.segment import Cut

router = APIRouter(prefix="/v1/models/{model}", tags=["inference"], route_class=SpoolingRoute)

Format = Literal["labels", "json", "geojson", "csv"]
GEOJSON = "application/geo+json"
GEOJSON_SCHEMA = {
    "type": "object",
    "description": "An RFC 7946 FeatureCollection: one Polygon or MultiPolygon Feature an object, "
    "properties id, objectType (detection) and classification {name, color}",
    "required": ["type", "features"],
}


def objects_json(found: Sequence[Objects]) -> tuple[bytes, str]:
    """The objects table and count as JSON (multi-class: each object with its class)."""
    first = found[0]
    segmentation = first.segmentation
    height, width = first.labels.shape
    options = first.options
    cut = _cut(first) if len(found) == 1 else None
    ranged = first.count_range
    fields = {}
    if segmentation.multi_class:
        fields["classes"] = {
            objects.class_name or "": ClassObjectsJson(
                threshold=_cut(objects).value,
                threshold_source=_cut(objects).source,
                count=objects.count,
            )
            for objects in found
        }
    answer = InstancesJson(
        width=width,
        height=height,
        threshold=None if cut is None else cut.value,
        threshold_source=None if cut is None else cut.source,
        split=options.split,
        min_area=options.min_area,
        connectivity=options.connectivity,  # type: ignore[arg-type]
        count=sum(objects.count for objects in found),
        count_range=None
        if ranged is None
        else CountRangeJson(
            calibration_id=ranged.calibration_id, thresholds=ranged.thresholds, counts=ranged.counts
        ),
        objects=[
            _object_json(row, objects.class_name) for objects in found for row in objects.rows
        ],
        **fields,
    )
    # Unset fields (a binary model's classes and object classes) stay out of the answer.
    return answer.model_dump_json(by_alias=True, exclude_unset=True).encode(), "application/json"


def _object_json(row: ObjectRow, class_name: str | None) -> ObjectJson:
    """One table row; a multi-class model's with its class."""
    values = row.as_dict()
    if class_name is not None:
        values["class"] = class_name
    return ObjectJson.model_validate(values)


def objects_geojson(found: Sequence[Objects], class_name: str = "foreground") -> tuple[bytes, str]:
    """The objects as a FeatureCollection of QuPath detections, classified by their class.

    A binary model's objects are all of class `class_name`; a multi-class model's of their own
    class, each class in its colour, and the collection's properties give each class's cut.
    """
    first = found[0]
    segmentation = first.segmentation
    properties: dict[str, object] = {"model": segmentation.model, "digest": segmentation.digest}
    if segmentation.multi_class:
        if len(found) == 1:
            properties["threshold"] = _cut(first).value
            properties["threshold_source"] = _cut(first).source
        properties["classes"] = {
            objects.class_name: {
                "threshold": _cut(objects).value,
                "threshold_source": _cut(objects).source,
                "count": objects.count,
                "color": list(_colour(objects)),
            }
            for objects in found
        }
    else:
        properties["threshold"] = segmentation.cut.value
        properties["threshold_source"] = segmentation.cut.source
    properties["split"] = first.options.split
    properties["count"] = sum(objects.count for objects in found)
    features = []
    for objects in found:
        name = objects.class_name or class_name
        features += feature_texts(objects.labels, objects.rows, name, _colour(objects))
    return collection_json(properties, features), GEOJSON


def objects_csv(found: Sequence[Objects]) -> tuple[bytes, str]:
    """The objects table as CSV, one object a row (multi-class: with a `class` column)."""
    rows = [row for objects in found for row in objects.rows]
    classes = None
    if found[0].segmentation.multi_class:
        classes = [objects.class_name or "" for objects in found for _ in objects.rows]
    return csv_table(rows, classes).encode(), "text/csv; charset=utf-8"


def objects_labels(found: Sequence[Objects]) -> tuple[bytes, str]:
    """The label image: 16-bit PNG, or 32-bit TIFF past 65,535 objects (one class's)."""
    return labels_file(found[0].labels)


def _cut(objects: Objects) -> Cut:
    """The cut the objects were found at: their class's for a multi-class model."""
    segmentation = objects.segmentation
    if objects.class_name is None:
        return segmentation.cut
    return segmentation.cuts[segmentation.class_index(objects.class_name)]


def _colour(objects: Objects) -> tuple[int, int, int]:
    """The class's colour, as the overlay paints it; a binary model's objects the overlay tint."""
    if objects.class_name is None:
        return DEFAULT_COLOR
    index = objects.segmentation.class_index(objects.class_name)
    return CLASS_COLOURS[index % len(CLASS_COLOURS)]


def check_instances_class(served: ServedModel, name: str | None, format: str) -> None:
    """Refuse a `?class=` the model cannot answer, and a multi-class label image without one."""
    check_class(served, name)
    if served.multi_class and name is None and format == "labels":
        raise ProblemError(
            422,
            "Labels are one class's",
            f"model {served.name!r} has the classes {', '.join(served.classes)}, and a label "
            "image numbers one class's objects; add class=NAME, or ask for format=json, "
            "geojson or csv (every class)",
            slug="labels-need-a-class",
        )


ENCODERS: dict[str, Callable[..., tuple[bytes, str]]] = {
    "labels": objects_labels,
    "json": objects_json,
    "geojson": objects_geojson,
    "csv": objects_csv,
}


@dataclass(frozen=True)
class _Answer:
    """The encode stage of one format: the body, its media type and the object count."""

    format: str
    class_name: str

    def __call__(self, found: Sequence[Objects]) -> tuple[bytes, str, int]:
        """Encode the objects in the format."""
        if self.format == "geojson":
            body, media_type = objects_geojson(found, self.class_name)
        else:
            body, media_type = ENCODERS[self.format](found)
        return body, media_type, sum(objects.count for objects in found)


@router.post(
    "/instances",
    summary="Objects in an image: label image, table or QuPath GeoJSON",
    response_model=InstancesJson,
    responses={
        200: {
            "content": {
                **binary_content("image/png", "text/csv")["content"],
                GEOJSON: {"schema": GEOJSON_SCHEMA},
            },
            "description": "labels: 16-bit PNG (0 background, 1..N; image/tiff, 32-bit, past "
            "65,535 objects); json: the objects table and count; geojson: a FeatureCollection of "
            "polygons in pixel coordinates, each a QuPath detection; csv: the table",
        },
        **PROBLEMS,
    },
)
async def instances(
    services: ServicesDep,
    served: ModelDep,
    image: ImageFile,
    format: Annotated[Format, Query(description="labels, json, geojson (QuPath) or csv.")] = "json",
    split: Annotated[
        Split,
        Query(description="none: connected components; watershed: split touching objects."),
    ] = DEFAULT_SPLIT,
    min_area: Annotated[
        int, Query(ge=0, description="Drop objects of fewer pixels (0: keep every object).")
    ] = 0,
    connectivity: Annotated[
        Literal[1, 2], Query(description="1: pixels touching by an edge; 2: by a corner too.")
    ] = 1,
    threshold: ThresholdQuery = None,
    class_: ClassQuery = None,
) -> Response:
    """The objects of the mask `/mask` answers (same threshold rules and headers).

    Multi-class models: `?class=name` labels that class's mask (the one `/mask?class=name`
    answers); without it the table, GeoJSON and CSV give every class's objects, each with its
    `class` (ids run 1..N within a class), and `format=labels` needs a class.
    """
    check_instances_class(served, class_, format)
    options = InstanceOptions(split, min_area, connectivity)
    upload = UploadedImage(image, services.settings.max_upload_bytes)
    # A binary model's one class, by the name its card gives it if it gives one.
    class_name = (served.card.output.class_names or ("foreground",))[0]
    encode = _Answer(format, class_name)
    with_range = format == "json"
    encoded = await find_objects(
        services, served, upload, options, encode, threshold, with_range, class_
    )
    body, media_type, count = encoded.body
    headers = threshold_headers(encoded.segmentation) | {"X-Object-Count": str(count)}
    return Response(body, media_type=media_type, headers=headers)
