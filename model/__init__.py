"""The network, its data, training, evaluation and calibration maths; knows nothing of HTTP."""

from model.checkpoint import CheckpointError, checkpoint_digest, load, load_checkpoint, save
from model.unet import UNet, UNetConfig

__all__ = [
    "CheckpointError",
    "UNet",
    "UNetConfig",
    "checkpoint_digest",
    "load",
    "load_checkpoint",
    "save",
]
