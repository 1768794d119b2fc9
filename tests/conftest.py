"""Fixtures shared by the whole suite."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

import model

SHIPPED_WEIGHTS = Path(model.__file__).parent / "weights"


@pytest.fixture(scope="session")
def shipped_weights() -> Path:
    """The folder of the trained checkpoints the repository ships."""
    assert (SHIPPED_WEIGHTS / "unet-sigmoid.safetensors").is_file(), "run `make weights` first"
    return SHIPPED_WEIGHTS


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """Leave with pytest's own status once everything is reported, skipping native teardown.

    Tests of the model-load time bound abandon a loading thread on purpose (as the service
    does); were one of the native thread pools (ONNX Runtime's, torch's) still busy while
    the interpreter tears down, the C++ runtime would abort the process after a green run.
    """
    status = getattr(config, "_unet_exitstatus", None)
    if status is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(int(status))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Remember the status for `pytest_unconfigure`."""
    session.config._unet_exitstatus = exitstatus  # type: ignore[attr-defined]
