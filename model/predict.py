"""Running a model on single images: the one place that turns arrays into model outputs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from model.heads import foreground_channel
from model.unet import UNet


@dataclass
class Prediction:
    """The foreground map of one image: the head's output and the logits it came from."""

    output: np.ndarray  # float32 (H, W), what the head returns
    logits: np.ndarray  # float32 (H, W), before the head; keeps order where a sigmoid rounds to 1


@torch.inference_mode()
def predict(model: UNet, image: np.ndarray) -> Prediction:
    """The foreground output and logits for one (C, H, W) float image in [0, 1]."""
    device = next(model.parameters()).device
    batch = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None].to(device)
    logits = model.logits(batch)
    output = model.head(logits)
    channel = foreground_channel(model.config.head)
    if model.config.head == "softmax":
        # The foreground logit against the background one is the logit of its softmax share.
        foreground_logits = logits[0, 1] - logits[0, 0]
    else:
        foreground_logits = logits[0, channel]
    return Prediction(
        output=output[0, channel].float().cpu().numpy(),
        logits=foreground_logits.float().cpu().numpy(),
    )
