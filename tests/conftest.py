"""Fixtures shared by the whole suite."""

from __future__ import annotations

from pathlib import Path

import pytest

import model

SHIPPED_WEIGHTS = Path(model.__file__).parent / "weights"


@pytest.fixture(scope="session")
def shipped_weights() -> Path:
    """The folder of the trained checkpoints the repository ships."""
    assert (SHIPPED_WEIGHTS / "unet-sigmoid.safetensors").is_file(), "run `make weights` first"
    return SHIPPED_WEIGHTS
