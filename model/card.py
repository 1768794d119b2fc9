"""Model cards: `NAME.json` beside a model's weights says how to load, feed and read it.

The schema is the design's ("Model cards"); outside tools write it. A JSON without `source` is a
native checkpoint (`model.checkpoint`) and reads as the card it implies: native source, `dtype`
normalisation unless it says otherwise, logits through its own head.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from model.checkpoint import CheckpointError, read_meta
from model.heads import foreground_channel
from model.normalize import ImageInput

SourceFormat = Literal["native", "monai", "torchscript", "exported", "onnx"]
Head = Literal["sigmoid", "relu", "identity", "hard_sigmoid", "softmax"]
Emits = Literal["logits", "probabilities", "scores"]


class CardError(CheckpointError):
    """A card that cannot be served; the message is one line naming the card and the fix."""


class Network(BaseModel):
    """A MONAI network: a class of `monai.networks.nets` and its constructor's arguments."""

    model_config = ConfigDict(extra="forbid")

    name: str
    args: dict[str, Any] = Field(default_factory=dict)


class Source(BaseModel):
    """Where the network comes from; `path` is relative to the card."""

    model_config = ConfigDict(extra="allow")

    format: SourceFormat
    path: str | None = None
    network: Network | None = None


class Output(BaseModel):
    """What the network emits, its foreground channel and the head the service applies."""

    model_config = ConfigDict(extra="allow")

    emits: Emits = "logits"
    channel: int = Field(default=0, ge=0)
    head: Head = "sigmoid"

    @property
    def served_head(self) -> str:
        """The head as the rest of the code names it: `head` for logits, else what is emitted."""
        return self.head if self.emits == "logits" else self.emits


class Tiling(BaseModel):
    """Per-model overrides of UNET_TILE_SIZE and UNET_TILE_OVERLAP."""

    model_config = ConfigDict(extra="forbid")

    size: int | None = Field(default=None, ge=16)
    overlap: float | None = Field(default=None, ge=0.0, le=0.5)


class ModelCard(BaseModel):
    """One served model's card."""

    model_config = ConfigDict(extra="allow")

    source: Source
    input: ImageInput = Field(default_factory=lambda: ImageInput())
    output: Output = Field(default_factory=lambda: Output())
    pad_multiple: int = Field(default=1, ge=1)
    tiling: Tiling = Field(default_factory=lambda: Tiling())
    threshold: float | None = None

    def source_path(self, card_path: Path) -> Path:
        """The network file, resolved against the card's folder."""
        if self.source.path is None:
            raise CardError(f"{card_path}: source.path is missing; name the network file")
        return (card_path.parent / self.source.path).resolve()


def _native(json_path: Path, raw: dict[str, Any]) -> ModelCard:
    """The card a native checkpoint's JSON implies."""
    meta = read_meta(json_path)
    arch = meta.architecture
    fields = {
        "source": {"format": "native", "path": json_path.with_suffix(".safetensors").name},
        "input": raw.get("input") or {"channels": arch.in_channels},
        "output": {"emits": "logits", "channel": foreground_channel(arch.head), "head": arch.head},
        "pad_multiple": 2**arch.depth,
        "tiling": raw.get("tiling") or {},
        "threshold": meta.threshold,
    }
    card = _validate(json_path, fields)
    if card.input.channels != arch.in_channels:
        raise CardError(
            f"{json_path}: input.channels is {card.input.channels} but the architecture takes "
            f"{arch.in_channels}; make them equal"
        )
    return card


def _validate(path: Path, raw: dict[str, Any]) -> ModelCard:
    try:
        return ModelCard.model_validate(raw)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "card"
        raise CardError(
            f"{path}: {where}: {first['msg']}; fix the card (schema: DESIGN.md, 'Model cards')"
        ) from None


def load_card(path: str | Path) -> ModelCard:
    """Read and validate the card at `path` (`NAME.json`, or a native `NAME.safetensors`)."""
    path = Path(path)
    json_path = path.with_suffix(".json") if path.suffix == ".safetensors" else path
    if not json_path.is_file():
        raise CardError(f"{json_path}: missing; every model needs its card (NAME.json)")
    try:
        raw = json.loads(json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CardError(f"{json_path}: not valid JSON ({error})") from None
    if not isinstance(raw, dict):
        raise CardError(f"{json_path}: a card is a JSON object")
    if "source" not in raw:
        return _native(json_path, raw)
    return _validate(json_path, raw)
