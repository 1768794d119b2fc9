"""Response shapes of `POST /v1/models/{m}/instances?format=json`, with examples."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ObjectJson(BaseModel):
    """One object, in pixels: x right, y down; pixel (r, c) covers [c, c+1] x [r, r+1]."""

    id: int = Field(description="Its value in the label image (1..count).")
    area: int = Field(description="Pixels.")
    centroid: tuple[float, float] = Field(description="(x, y) of the mean pixel centre.")
    bbox: tuple[int, int, int, int] = Field(
        description="(x_min, y_min, x_max, y_max), max exclusive."
    )
    mean_probability: float = Field(description="Mean of the model's output over the object.")
    max_probability: float = Field(description="Largest output over the object.")
    perimeter: float = Field(description="scikit-image's perimeter estimate, pixels.")
    equivalent_diameter: float = Field(description="Diameter of the disc of the same area.")
    touches_border: bool = Field(description="The object reaches the image's edge (maybe cut).")
    class_: str | None = Field(
        default=None,
        alias="class",
        description="Multi-class models only: the object's class (ids run 1..N within a class).",
    )

    model_config = ConfigDict(populate_by_name=True)


class ClassObjectsJson(BaseModel):
    """A multi-class model's class: the cut its objects were found at, and how many."""

    threshold: float
    threshold_source: Literal["default", "calibration", "manual", "request"]
    count: int


class CountRangeJson(BaseModel):
    """The count at the two ends of the active calibration's bootstrap threshold interval."""

    calibration_id: str
    thresholds: tuple[float, float] = Field(description="The interval's low and high threshold.")
    counts: tuple[int, int] = Field(
        description="The object count at each (a lower threshold usually merges or grows objects)."
    )


class InstancesJson(BaseModel):
    """An image's objects and how they were found."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "width": 256,
                    "height": 256,
                    "threshold": 0.48,
                    "threshold_source": "calibration",
                    "split": "watershed",
                    "min_area": 0,
                    "connectivity": 1,
                    "count": 1,
                    "count_range": {
                        "calibration_id": "0193a1c2e4f57a1b2c3d4e5f6a7b8c9d",
                        "thresholds": [0.41, 0.55],
                        "counts": [1, 1],
                    },
                    "objects": [
                        {
                            "id": 1,
                            "area": 412,
                            "centroid": [40.6, 12.1],
                            "bbox": [29, 0, 53, 24],
                            "mean_probability": 0.86,
                            "max_probability": 0.99,
                            "perimeter": 78.3,
                            "equivalent_diameter": 22.9,
                            "touches_border": True,
                        }
                    ],
                }
            ]
        }
    )

    width: int
    height: int
    threshold: float | None = Field(
        description="The threshold used: foreground where score >= it (multi-class: the class's "
        "when one is asked for, else null and each class's is in `classes`)."
    )
    threshold_source: Literal["default", "calibration", "manual", "request"] | None
    split: Literal["none", "watershed"]
    min_area: int
    connectivity: Literal[1, 2]
    count: int = Field(description="How many objects (the length of `objects`).")
    count_range: CountRangeJson | None = Field(
        default=None,
        description="Only when the threshold in force comes from a calibration with a bootstrap "
        "interval (threshold_ci): the count at the interval's two ends.",
    )
    objects: list[ObjectJson]
    classes: dict[str, ClassObjectsJson] | None = Field(
        default=None,
        description="Multi-class models only: each answered class's threshold and count.",
    )
