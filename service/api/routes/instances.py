"""Objects in an image: a label image, the objects table (JSON, CSV) or QuPath-ready GeoJSON.

Parse the query, call the instances use case (`service.usecases.instances`) with the format's
encode stage, answer with `/mask`'s threshold headers plus the object count.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response

from model.inference.instance_formats import csv_table, feature_collection, labels_file
from model.inference.instances import DEFAULT_SPLIT, InstanceOptions, Split
from service.api.dependencies import ModelDep, ServicesDep
from service.api.instance_schemas import CountRangeJson, InstancesJson, ObjectJson
from service.api.openapi import binary_content
from service.api.routes.inference import PROBLEMS, ImageFile, ThresholdQuery, _threshold_headers
from service.api.spool import SpoolingRoute
from service.api.uploads import UploadedImage
from service.usecases.instances import Objects, find_objects

router = APIRouter(prefix="/v1/models/{model}", tags=["inference"], route_class=SpoolingRoute)

Format = Literal["labels", "json", "geojson", "csv"]
GEOJSON = "application/geo+json"
GEOJSON_SCHEMA = {
    "type": "object",
    "description": "An RFC 7946 FeatureCollection: one Polygon or MultiPolygon Feature an object, "
    "properties id, objectType (detection) and classification {name, color}",
    "required": ["type", "features"],
}


def objects_json(objects: Objects) -> tuple[bytes, str]:
    """The objects table and count as JSON."""
    cut = objects.segmentation.cut
    height, width = objects.labels.shape
    found = objects.count_range
    answer = InstancesJson(
        width=width,
        height=height,
        threshold=cut.value,
        threshold_source=cut.source,
        split=objects.options.split,
        min_area=objects.options.min_area,
        connectivity=objects.options.connectivity,  # type: ignore[arg-type]
        count=objects.count,
        count_range=None
        if found is None
        else CountRangeJson(
            calibration_id=found.calibration_id, thresholds=found.thresholds, counts=found.counts
        ),
        objects=[ObjectJson(**row.as_dict()) for row in objects.rows],
    )
    return answer.model_dump_json().encode(), "application/json"


def objects_geojson(objects: Objects, class_name: str = "foreground") -> tuple[bytes, str]:
    """The objects as a FeatureCollection of QuPath detections of class `class_name`."""
    segmentation = objects.segmentation
    properties = {
        "model": segmentation.model,
        "digest": segmentation.digest,
        "threshold": segmentation.cut.value,
        "threshold_source": segmentation.cut.source,
        "split": objects.options.split,
        "count": objects.count,
    }
    collection = feature_collection(objects.labels, objects.rows, properties, class_name)
    return json.dumps(collection, separators=(",", ":")).encode(), GEOJSON


def objects_csv(objects: Objects) -> tuple[bytes, str]:
    """The objects table as CSV, one object a row."""
    return csv_table(objects.rows).encode(), "text/csv; charset=utf-8"


def objects_labels(objects: Objects) -> tuple[bytes, str]:
    """The label image: 16-bit PNG, or 32-bit TIFF past 65,535 objects."""
    return labels_file(objects.labels)


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

    def __call__(self, objects: Objects) -> tuple[bytes, str, int]:
        """Encode `objects` in the format."""
        if self.format == "geojson":
            body, media_type = objects_geojson(objects, self.class_name)
        else:
            body, media_type = ENCODERS[self.format](objects)
        return body, media_type, objects.count


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
) -> Response:
    """The objects of the mask `/mask` answers (same threshold rules and headers)."""
    options = InstanceOptions(split, min_area, connectivity)
    upload = UploadedImage(image, services.settings.max_upload_bytes)
    # A binary model's one class, by the name its card gives it if it gives one.
    class_name = (served.card.output.class_names or ("foreground",))[0]
    encode = _Answer(format, class_name)
    with_range = format == "json"
    encoded = await find_objects(services, served, upload, options, encode, threshold, with_range)
    body, media_type, count = encoded.body
    headers = _threshold_headers(encoded.segmentation) | {"X-Object-Count": str(count)}
    return Response(body, media_type=media_type, headers=headers)
