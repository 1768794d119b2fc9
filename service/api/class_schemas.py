"""Answer shapes of multi-class models (multilabel and multiclass), with examples."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.api.schemas import Threshold

CutSource = Literal["default", "calibration", "manual", "request"]


class ClassMask(BaseModel):
    """One class's mask as COCO uncompressed run-length encoding."""

    threshold: float = Field(description="This class's threshold.")
    threshold_source: CutSource
    foreground_fraction: float = Field(description="Share of pixels labelled this class.")
    rle: dict[str, Any] = Field(
        description="COCO uncompressed RLE: size [height, width], column-major counts that "
        "start with a background run."
    )


class ClassMasksJson(BaseModel):
    """Every class's mask of a multi-class model, by the decision rule (multiclass) or each
    class at its own threshold (multilabel, where masks may overlap)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "width": 4,
                    "height": 3,
                    "mode": "multiclass",
                    "threshold": "nucleus=0.41;debris=0.63",
                    "classes": {
                        "nucleus": {
                            "threshold": 0.41,
                            "threshold_source": "calibration",
                            "foreground_fraction": 0.25,
                            "rle": {"size": [3, 4], "counts": [4, 3, 5]},
                        },
                        "debris": {
                            "threshold": 0.63,
                            "threshold_source": "calibration",
                            "foreground_fraction": 0.0,
                            "rle": {"size": [3, 4], "counts": [12]},
                        },
                    },
                }
            ]
        }
    )

    width: int
    height: int
    mode: Literal["multilabel", "multiclass"]
    threshold: str = Field(description="Each class's threshold, as the X-Threshold header says.")
    classes: dict[str, ClassMask] = Field(description="Each class's mask, in class order.")


class ClassThresholds(BaseModel):
    """A multi-class model's threshold in force for each class."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "classes": {
                        "nucleus": {"value": 0.41, "source": "calibration"},
                        "debris": {"value": 0.63, "source": "manual"},
                    }
                }
            ]
        }
    )

    classes: dict[str, Threshold] = Field(description="Each class's threshold, in class order.")
