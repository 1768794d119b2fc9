"""Which torch device a name means, shared by training, the CLI and the service."""

from __future__ import annotations

import torch


def pick_device(name: str = "auto") -> torch.device:
    """`auto` means CUDA when present, else CPU; any other name is torch's (cpu, cuda:N)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
