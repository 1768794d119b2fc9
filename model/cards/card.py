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
import re
import stat
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
    model_validator,
)

from model.cards.checkpoint import read_meta
from model.data.normalize import ImageInput
from model.errors import CardError
from model.network.heads import foreground_channel, head_range

SourceFormat = Literal["native", "monai", "torchscript", "exported", "onnx"]
Head = Literal["sigmoid", "relu", "identity", "hard_sigmoid", "softmax"]
Emits = Literal["logits", "probabilities", "scores"]
Mode = Literal["binary", "multilabel", "multiclass"]
MODES: tuple[str, ...] = ("binary", "multilabel", "multiclass")
# Class names travel in query strings (`?class=`) and headers (`X-Threshold: nucleus=0.41`).
CLASS_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")

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
    """What the network emits, its foreground channel(s), classes and the head the service applies.

    `mode` is `binary` (one foreground, `channel`), `multilabel` (K independent channels, class i
    in channel i) or `multiclass` (a softmax over background in channel 0 and class i in channel
    i + 1); `classes` names the K foreground classes in channel order.
    """

    model_config = ConfigDict(extra="allow")

    emits: Emits = "logits"
    channel: int = Field(default=0, ge=0)
    head: Head = "sigmoid"
    mode: Mode = "binary"
    classes: tuple[str, ...] | None = None

    @model_validator(mode="after")
    def _classes_fit_the_mode(self) -> Output:
        """Classes only with a multi-class mode, well named, and a head that suits the mode."""
        if self.mode == "binary":
            if self.classes is not None:
                raise ValueError(
                    "output.classes names the classes of a multilabel or multiclass model; set "
                    "output.mode to one of those, or drop output.classes for a binary model"
                )
            return self
        if not self.classes:
            raise ValueError(
                f"output.mode {self.mode} needs output.classes, the foreground class names in "
                'channel order (for example ["nucleus", "debris"])'
            )
        for name in self.classes:
            if not CLASS_NAME.fullmatch(name) or name.lower() == "background":
                raise ValueError(
                    f"class name {name!r} is not allowed; use a letter then letters, digits, "
                    "'_', '-' or '.' (at most 64), and not 'background' (it is implicit)"
                )
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"output.classes {list(self.classes)} repeats a name; name each once")
        if self.mode == "multiclass" and (
            self.emits == "scores" or (self.emits == "logits" and self.head != "softmax")
        ):
            raise ValueError(
                "a multiclass model's output is a softmax over background and classes; set "
                "output.head to softmax (emits logits) or output.emits to probabilities"
            )
        if self.mode == "multilabel" and self.emits == "logits" and self.head == "softmax":
            raise ValueError(
                "a multilabel model has one independent channel per class; use head sigmoid "
                "(or set output.mode to multiclass for a softmax)"
            )
        if "channel" in self.model_fields_set and self.channel != self.class_channels[0]:
            raise ValueError(
                f"output.channel is {self.channel}, but a {self.mode} model's first class is "
                f"channel {self.class_channels[0]}; drop output.channel"
            )
        return self

    @model_serializer(mode="wrap")
    def _unwritten_mode_stays_unwritten(self, handler: SerializerFunctionWrapHandler) -> Any:
        """A card that never wrote `mode` or `classes` dumps as it did before they existed."""
        data = handler(self)
        if isinstance(data, dict):
            # A multi-class card's classes say where each class is; an unwritten channel is moot.
            moot = ("mode", "classes") if self.mode == "binary" else ("channel",)
            for key in moot:
                if key not in self.model_fields_set:
                    data.pop(key, None)
        return data

    @property
    def served_head(self) -> str:
        """The head as the rest of the code names it: `head` for logits, else what is emitted."""
        return self.head if self.emits == "logits" else self.emits

    @property
    def class_names(self) -> tuple[str, ...]:
        """The K foreground class names in channel order; empty for a binary model."""
        return self.classes or ()

    @property
    def class_channels(self) -> tuple[int, ...]:
        """The network's output channel of each class (binary: the one foreground channel)."""
        if self.mode == "multiclass":
            return tuple(range(1, len(self.class_names) + 1))
        if self.mode == "multilabel":
            return tuple(range(len(self.class_names)))
        return (self.channel,)

    @property
    def first_channel(self) -> int:
        """The channel the single-map path reads: `channel`, or the first class's channel."""
        return self.class_channels[0]

    @property
    def n_channels(self) -> int | None:
        """How many channels the network must emit; None where a binary card leaves it open."""
        if self.mode == "multiclass":
            return len(self.class_names) + 1
        if self.mode == "multilabel":
            return len(self.class_names)
        return None


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
    output: dict[str, Any] = {"emits": "logits", "head": arch.head}
    if meta.output is None:
        output["channel"] = foreground_channel(arch.head)
    else:  # a multi-class checkpoint: its mode and classes say where each class is
        output |= meta.output
    fields = {
        "source": {"format": "native", "path": json_path.with_suffix(".safetensors").name},
        "input": raw.get("input") or {"channels": arch.in_channels},
        "output": output,
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
    wanted = card.output.n_channels
    if wanted is not None and wanted != arch.out_channels:
        raise CardError(
            f"{json_path}: output.classes names {len(card.output.class_names)} class(es), so a "
            f"{card.output.mode} network needs {wanted} output channels, but the architecture has "
            f"{arch.out_channels}; make output.classes match the network"
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
