"""Optional libraries a card's source may need, and the install line when one is missing."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

from model.errors import CardError

# Same command line as torch: an unpinned resolve would replace the CPU wheel with a CUDA build.
INSTALL = "pip install 'unet-service[{extra}]' torch==2.13.0"


def require(module: str, extra: str, card_path: Path, source: str) -> ModuleType:
    """Import `module`, or CardError naming the card and the exact install command."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise CardError(
            f"{card_path}: source '{source}' needs {module.split('.')[0]}, which is not "
            f"installed; {INSTALL.format(extra=extra)}"
        ) from None
