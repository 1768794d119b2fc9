"""Running a model on single images: the one place that turns arrays into model outputs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from model.cards.sources.base import Predictor
from model.cards.sources.native import as_predictor
from model.errors import NonFiniteOutputError
from model.network.unet import UNet


@dataclass
class Prediction:
    """The foreground map of one image: the head's output and the logits it came from."""

    output: np.ndarray  # float32 (H, W), what the head returns
    logits: np.ndarray  # float32 (H, W), before the head; keeps order where a sigmoid rounds to 1


@dataclass
class ClassPrediction:
    """Every class's map of one image, in class order (`Predictor.classes`)."""

    output: np.ndarray  # float32 (K, H, W): softmax shares (multiclass) or per-channel head output
    logits: np.ndarray  # float32 (K, H, W): order-keeping scores the calibration bins


def check_finite(prediction: Prediction, name: str = "the image") -> Prediction:
    """`prediction` if its output and logits are finite, else NonFiniteOutputError."""
    bad = prediction.output.size - int(np.count_nonzero(np.isfinite(prediction.output)))
    bad = max(bad, prediction.logits.size - int(np.count_nonzero(np.isfinite(prediction.logits))))
    if bad:
        raise NonFiniteOutputError(
            f"the model's output for {name} has {bad} NaN or infinite values of "
            f"{prediction.output.size}; its pixel values drive the network out of range, so "
            "rescale the image (for example to 8 or 16 bits) and send it again"
        )
    return prediction


def foreground(model: UNet | Predictor, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(output, foreground logits), each (N, H, W), for a batch of logits (N, K, H, W)."""
    return as_predictor(model).foreground(logits)


def to_predictions(model: UNet | Predictor, logits: torch.Tensor) -> list[Prediction]:
    """One float32 CPU Prediction per image of a batch of the network's output (N, K, H, W)."""
    output, fg_logits = foreground(model, logits.float())
    outputs, all_logits = output.cpu().numpy(), fg_logits.cpu().numpy()
    # Contiguous maps: a view into a padded blend would keep the whole buffer alive.
    return [
        Prediction(output=np.ascontiguousarray(o), logits=np.ascontiguousarray(lg))
        for o, lg in zip(outputs, all_logits, strict=True)
    ]


@torch.inference_mode()
def predict(model: UNet | Predictor, image: np.ndarray) -> Prediction:
    """The foreground output and logits for one normalised (C, H, W) float image."""
    predictor = as_predictor(model)
    batch = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
    raw = predictor.logits(batch.to(predictor.device))
    return check_finite(to_predictions(predictor, raw)[0])


def to_class_predictions(model: UNet | Predictor, logits: torch.Tensor) -> list[ClassPrediction]:
    """One float32 CPU ClassPrediction per image of a batch of the network's output (N, K, H, W)."""
    output, scores = as_predictor(model).class_maps(logits.float())
    return [
        ClassPrediction(output=np.ascontiguousarray(o), logits=np.ascontiguousarray(lg))
        for o, lg in zip(output.cpu().numpy(), scores.cpu().numpy(), strict=True)
    ]


@torch.inference_mode()
def predict_classes(model: UNet | Predictor, image: np.ndarray) -> ClassPrediction:
    """Every class's map (K, H, W) for one normalised (C, H, W) float image (binary: K = 1)."""
    predictor = as_predictor(model)
    batch = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
    prediction = to_class_predictions(predictor, predictor.logits(batch.to(predictor.device)))[0]
    check_finite(Prediction(output=prediction.output, logits=prediction.logits))
    return prediction
