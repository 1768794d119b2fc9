"""Model cards: `NAME.json` beside a model's weights says how to load, feed and read it.

The schema is the README's ("Serving your own U-Net: model cards"); outside tools write it. A
JSON without `source` is a native checkpoint (`model.cards.checkpoint`) and reads as the card it
implies: native source, `dtype` normalisation unless it says otherwise, logits through its own
head.
"""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from model.cards.checkpoint import read_meta
from model.data.normalize import ImageInput
from model.errors import CardError
from model.network.heads import foreground_channel, head_range

SourceFormat = Literal["native", "monai", "torchscript", "exported", "onnx"]
Head = Literal["sigmoid", "relu", "identity", "hard_sigmoid", "softmax"]
Emits = Literal["logits", "probabilities", "scores"]

DEFAULT_MAX_MODEL_BYTES = 2 << 30  # the service's UNET_MAX_MODEL_BYTES default
MAX_CARD_BYTES = 1 << 20  # a card is a few hundred bytes of JSON; a megabyte is generous


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

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    source: Source
    input: ImageInput = Field(default_factory=lambda: ImageInput())
    output: Output = Field(default_factory=lambda: Output())
    pad_multiple: int = Field(default=1, ge=1)
    tiling: Tiling = Field(default_factory=lambda: Tiling())
    threshold: float | None = None

    @model_validator(mode="after")
    def _threshold_in_range(self) -> ModelCard:
        """A threshold outside the served output's range would select nothing or everything."""
        if self.threshold is not None:
            head = self.output.served_head
            low, high = head_range(head)
            if not low <= self.threshold <= high:
                raise ValueError(
                    f"threshold {self.threshold:g} is outside the {head} output's range "
                    f"[{low:g}, {high:g}]; give a threshold inside it"
                )
        return self

    def source_path(self, card_path: Path) -> Path:
        """The network file, resolved inside the card's folder (no `..`, absolute or link out)."""
        written = self.source.path
        if written is None:
            raise CardError(f"{card_path}: source.path is missing; name the network file")
        parts = PurePosixPath(written.replace("\\", "/"))
        if parts.is_absolute() or PureWindowsPath(written).is_absolute() or ".." in parts.parts:
            raise CardError(
                f"{card_path}: source.path {written!r} must name a file in the card's folder "
                "(no absolute path, no '..'); copy the file there"
            )
        try:
            folder = card_path.parent.resolve()
            path = (folder / parts).resolve()
        except (OSError, RuntimeError) as error:  # a symlink loop
            raise CardError(
                f"{card_path}: source.path {written!r} cannot be resolved ({error})"
            ) from None
        if not path.is_relative_to(folder):
            raise CardError(
                f"{card_path}: source.path {written!r} is a link out of the card's folder; copy "
                "the file into the folder"
            )
        return path


def check_file(path: Path, card_path: Path, max_bytes: int, what: str) -> None:
    """Refuse anything but a regular file of at most `max_bytes` before it is opened.

    `os.stat` never opens the file, so a named pipe cannot block and a device cannot stream
    without end; the size bounds what a loader reads into memory.
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise CardError(
            f"{card_path}: {what} is missing; put the file there or fix source.path"
        ) from None
    except OSError as error:
        raise CardError(f"{card_path}: {what} cannot be read ({error.strerror})") from None
    if not stat.S_ISREG(info.st_mode):
        raise CardError(
            f"{card_path}: {what} is not a regular file (a pipe, device or folder); point the "
            "card at the model file itself"
        )
    if info.st_size > max_bytes:
        raise CardError(
            f"{card_path}: {what} is {info.st_size} bytes, over the limit of {max_bytes} "
            "(UNET_MAX_MODEL_BYTES); raise the limit if the file is right"
        )


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of the range of a finite number")
    return value


def _not_a_number(name: str) -> float:
    raise ValueError(f"{name} is not a finite number")


def read_json(path: Path) -> Any:
    """A card's JSON, refusing NaN and infinities wherever they appear (json accepts them)."""
    check_file(path, path, MAX_CARD_BYTES, "the card")
    try:
        return json.loads(path.read_text(), parse_float=_finite, parse_constant=_not_a_number)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CardError(f"{path}: not valid JSON ({error})") from None
    except ValueError as error:
        raise CardError(f"{path}: {error}; every number in a card must be finite") from None


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
            f"{path}: {where}: {first['msg']}; fix the card (schema: README, 'model cards')"
        ) from None


def load_card(path: str | Path) -> ModelCard:
    """Read and validate the card at `path` (`NAME.json`, or a native `NAME.safetensors`)."""
    path = Path(path)
    json_path = path.with_suffix(".json") if path.suffix == ".safetensors" else path
    if not json_path.exists():
        raise CardError(f"{json_path}: missing; every model needs its card (NAME.json)")
    raw = read_json(json_path)
    if not isinstance(raw, dict):
        raise CardError(f"{json_path}: a card is a JSON object")
    if "source" not in raw:
        return _native(json_path, raw)
    return _validate(json_path, raw)
