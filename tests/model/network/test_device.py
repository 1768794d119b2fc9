"""Device names, and that the service can pick one without importing the training code."""

from __future__ import annotations

import subprocess
import sys

import torch

from model.network.device import pick_device


def test_auto_is_cuda_only_when_present() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert pick_device("auto").type == expected
    assert pick_device() == pick_device("auto")


def test_other_names_are_torch_devices() -> None:
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("cuda:1") == torch.device("cuda", 1)


def test_the_service_does_not_import_training() -> None:
    code = "import sys, service.app; print('model.training.train' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"
