"""The one exception the calibration engine raises for input a person has to fix."""

from __future__ import annotations


class CalibrationError(ValueError):
    """Calibration input or parameters that give no threshold; the message says what to fix."""
