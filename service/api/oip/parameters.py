"""What a v2 request asks for (its parameters and outputs) and what the answer's document says.

Request parameters: `threshold` (a number, for every class, as v1's `?threshold=`) and `class` (a
multi-class model's class name: the answer holds that class's plane only). Response parameters
carry the thresholds' provenance as v1's X-Threshold-* headers do.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from service.api.oip.errors import OipError
from service.api.oip.segmenting import Segmented
from service.api.oip.tensors import InferenceRequest
from service.inference.registry import ServedModel
from service.usecases.thresholds import check_threshold

OUTPUTS = {"probabilities": "FP32", "mask": "UINT8", "threshold": "FP32"}


def request_threshold(parsed: InferenceRequest, served: ServedModel) -> float | None:
    """The request's `threshold` parameter, checked against the head's range; None if absent."""
    value = parsed.parameters.get("threshold")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise OipError(400, f"parameter threshold must be a number, not {value!r}")
    return check_threshold(served, float(value))


def request_class(parsed: InferenceRequest, served: ServedModel) -> str | None:
    """The request's `class` parameter: one of a multi-class model's classes; None if absent."""
    value = parsed.parameters.get("class")
    if value is None:
        return None
    if not served.multi_class:
        raise OipError(400, f"model {served.name!r} is binary (one plane); send no class parameter")
    if not isinstance(value, str) or value not in served.classes:
        raise OipError(
            400,
            f"parameter class is {value!r}; model {served.name!r} has the classes "
            f"{', '.join(served.classes)}",
        )
    return value


def wanted_outputs(parsed: InferenceRequest) -> list[tuple[str, bool]]:
    """The outputs to answer, each with whether it goes as binary data."""
    if parsed.outputs is None:
        return [(name, parsed.binary_outputs) for name in OUTPUTS]
    unknown = [output.name for output in parsed.outputs if output.name not in OUTPUTS]
    if unknown:
        raise OipError(400, f"unknown output(s) {unknown}; this model has {', '.join(OUTPUTS)}")
    return [
        (output.name, parsed.binary_outputs if output.binary is None else output.binary)
        for output in parsed.outputs
    ]


def output_data(name: str, results: list[Segmented]) -> np.ndarray:
    """Output `name` of the batch: [N, K, H, W] planes, or the K thresholds."""
    if name == "threshold":
        return np.array(results[0].planes.thresholds, dtype=np.float32)
    if name == "probabilities":
        return np.stack([result.planes.probabilities for result in results])
    return np.stack([result.planes.mask for result in results])


def answer_document(
    served: ServedModel, parsed: InferenceRequest, first: Segmented
) -> dict[str, Any]:
    """The response's JSON fields besides its outputs: ids and the thresholds' provenance."""
    provenance = first.provenance
    planes = first.planes
    parameters: dict[str, Any] = {
        # A number for a binary model; `nucleus=0.41;debris=0.63` (as X-Threshold) otherwise,
        # since a parameter holds one scalar. The `threshold` output has the numbers.
        "threshold": planes.thresholds[0] if not planes.classes else first.threshold_text,
        "threshold_source": provenance.source,
        "threshold_stale": provenance.stale,
        "drift_status": provenance.drift,
    }
    if planes.classes:
        parameters["classes"] = ",".join(planes.classes)
    if provenance.calibration_id is not None:
        parameters["calibration_id"] = provenance.calibration_id
    document: dict[str, Any] = {"model_name": served.name, "model_version": served.digest}
    if parsed.id is not None:
        document["id"] = parsed.id
    document["parameters"] = parameters
    return document
