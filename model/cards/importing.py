"""`unet import`: write a model card for a network file from flags, then try it.

The card is written, loaded through the same code the service uses, and run once on a
synthetic image; the output's range then suggests what the network emits and which head to
apply. A card that does not load is removed again and the reason printed: one line naming the
card and the fix.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from model.cards.card import load_card
from model.cards.sources import load_predictor
from model.errors import CardError

# Network files by suffix, and the source format each suggests.
FORMATS = {".onnx": "onnx", ".pt2": "exported", ".pt": "torchscript", ".ts": "torchscript"}
WEIGHTS = (".safetensors", ".pt", ".pth")


def find_network(path: Path) -> Path:
    """`path` itself, or the one network file inside the folder `path`."""
    if not path.exists():
        raise CardError(f"{path}: not found; give the network file or its folder")
    if path.is_file():
        return path
    known = sorted(p for p in path.iterdir() if p.suffix in (*FORMATS, *WEIGHTS))
    if len(known) != 1:
        names = ", ".join(p.name for p in known) or "none"
        raise CardError(f"{path}: holds {len(known)} network files ({names}); give one file")
    return known[0]


def guess_format(network: Path, monai_network: str | None) -> str:
    """The source format a file suggests: a MONAI class given means a MONAI state dict."""
    if monai_network is not None:
        return "monai"
    fmt = FORMATS.get(network.suffix)
    if fmt is None:
        raise CardError(
            f"{network}: cannot tell the source from the suffix {network.suffix!r}; give "
            "--format (or --network for a MONAI state dict)"
        )
    return fmt


def suggest(low: float, high: float) -> dict[str, str]:
    """What an output range suggests the network emits, and the head to apply."""
    if low >= 0.0 and high <= 1.0:
        return {"emits": "probabilities", "head": "none (the network applies its own)"}
    if low >= 0.0:
        return {"emits": "scores", "head": "none (unbounded non-negative scores)"}
    return {"emits": "logits", "head": "sigmoid (softmax if the channels are classes)"}


def import_model(path: Path, card: dict[str, Any], out: Path | None) -> dict[str, Any]:
    """Write the card for the network at `path`, test it, and report what its output looks like.

    `card` holds the fields given on the command line; `source.format` and `source.path` are
    filled in here (the path relative to the card).
    """
    network = find_network(path)
    card_path = out or network.with_suffix(".json")
    if card_path.resolve() == network.resolve():
        raise CardError(f"{card_path}: would overwrite the network file; give --out NAME.json")
    source = card.setdefault("source", {})
    source.setdefault("format", guess_format(network, (source.get("network") or {}).get("name")))
    source["path"] = os.path.relpath(network.resolve(), card_path.parent.resolve())
    card_path.parent.mkdir(parents=True, exist_ok=True)
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    try:
        load_card(card_path)
        predictor = load_predictor(card_path)
    except CardError:
        card_path.unlink(missing_ok=True)  # a card that cannot serve is not left behind
        raise
    foreground = predictor.probe()
    low, high = float(foreground.min()), float(foreground.max())
    return {
        "card": str(card_path),
        "source": predictor.card.source.format,
        "output_channels": predictor.out_channels,
        "output_range": [low, high],
        "emits": predictor.card.output.emits,
        "head": predictor.head,
        "suggested": suggest(low, high),
    }
