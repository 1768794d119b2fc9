"""Every exception `model/` raises for something a person has to fix, in one place.

Each message is one line that names the file (or card, or parameter) and says what to fix; the
service maps these types to HTTP problems at its edge and never needs to parse the text.
"""

from __future__ import annotations


class DatasetError(ValueError):
    """A data problem; the message is one line naming the file and what to fix."""


class ImageTooLargeError(DatasetError):
    """An image over the pixel or decoded-byte limit, or Pillow's decompression-bomb guard."""


class OverInflatedError(DatasetError):
    """An image whose compressed data inflates past the size its header declares."""


class NonFiniteImageError(DatasetError):
    """An image with NaN or infinite pixels, which no intensity scaling can turn into data."""


class InflationError(ValueError):
    """A segment whose compressed data inflates past the size its header declares."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file and what to fix."""


class CardError(CheckpointError):
    """A card that cannot be served; the message is one line naming the card and the fix."""


class ExportError(RuntimeError):
    """The network could not be exported to ONNX; the message says why."""


class QuantizationError(ValueError):
    """A model that cannot be quantised, or whose quantisation the accuracy gate refuses."""


class ModelOutputError(ValueError):
    """A network answered something no mask or score can be read from."""


class NonFiniteOutputError(ModelOutputError):
    """The network answered NaN or infinity for a finite image: no mask can be read from it."""


class CalibrationError(ValueError):
    """Calibration input or parameters that give no threshold; the message says what to fix."""


class GuaranteeError(CalibrationError):
    """A guaranteed strategy that cannot certify any threshold on this set; says what is short."""


class LabelError(DatasetError, CalibrationError):
    """A label image or class mask that does not fit the model's classes; says what was expected."""


class UnknownClassError(ValueError):
    """A class name the model does not have, or a class asked of a binary model."""
