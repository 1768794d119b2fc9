"""The served models: every model card in the model folder, loaded once at start-up.

A model that fails to load, probe or warm up does not take the others down: it is kept with its
reason, listed as unavailable, and requests to it are answered with that reason (as Triton's
model repository does); the service refuses to start only when no model at all could be loaded.
Each load runs under a time bound; names are Unicode NFC, and two cards whose names differ only
in normalisation are both refused. Reasons shown to clients name files relative to the model
folder; the log keeps the full paths.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
import threading
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import torch

from model.cards.card import DEFAULT_MAX_MODEL_BYTES, ModelCard, load_card
from model.cards.checkpoint import CheckpointMeta, checkpoint_digest
from model.cards.sources import Predictor, load_predictor
from model.cards.sources.native import checkpoint_meta
from model.data.normalize import ImageInput
from model.errors import CardError, CheckpointError
from model.inference.classes import default_thresholds
from model.network.heads import head_range, is_probability

log = logging.getLogger(__name__)
T = TypeVar("T")
DEFAULT_LOAD_TIMEOUT_S = 120.0
# An absolute path in a message: shown to clients as its last component only.
_ABSOLUTE = re.compile(r"(?<![\w.~-])/(?:[^\s/'\"]+/)+(?P<name>[^\s/'\",;:()]+)")


def model_name(stem: str) -> str:
    """The served name of a card's file stem: Unicode NFC, as clients most often type it."""
    return unicodedata.normalize("NFC", stem)


def public_reason(reason: str, folder: Path) -> str:
    """`reason` without server paths: files relative to the model folder, others by name."""
    prefixes = {str(folder), str(folder.absolute()), str(folder.resolve())}
    for prefix in sorted(prefixes, key=len, reverse=True):
        reason = reason.replace(prefix.rstrip("/") + "/", "")
    return _ABSOLUTE.sub(lambda match: match.group("name"), reason)


def one_line(error: BaseException, card_path: Path) -> str:
    """A failure as one line naming the card: a CardError's own, else its type and message."""
    if isinstance(error, CheckpointError):
        return " ".join(str(error).split())
    text = " ".join(str(error).split())[:300] or "no message"
    return f"{card_path}: {type(error).__name__}: {text}"


def bounded(work: Callable[[], T], seconds: float, card_path: Path) -> T:
    """`work()` in a daemon thread, or a CardError once it has run `seconds`.

    A thread cannot be stopped: one that overruns is abandoned (daemon, so it never holds the
    process at exit) and its result, if it ever comes, is dropped.
    """
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = work()
        except BaseException as error:  # handed to the caller, whatever it is
            box["error"] = error

    thread = threading.Thread(target=run, name=f"load-{card_path.stem}", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise CardError(
            f"{card_path}: loading took longer than {seconds:g} s (UNET_MODEL_LOAD_TIMEOUT_S); "
            "check the network file, or raise the limit for a large model"
        )
    if "error" in box:
        raise box["error"]
    value: T = box["value"]
    return value


@dataclass
class ServedModel:
    """One loaded model, named by its card's file stem."""

    name: str
    path: Path  # the card
    network: Predictor
    digest: str
    device: torch.device
    precision: Literal["fp32", "int8"] = (
        "fp32"  # `int8`: served by `quantized`, with its own digest
    )
    quantized: Path | None = None  # the INT8 ONNX file (service.inference.precision)

    @property
    def card(self) -> ModelCard:
        """The model's card."""
        return self.network.card

    @property
    def meta(self) -> CheckpointMeta | None:
        """A native checkpoint's metadata (architecture, training); None for other sources."""
        return checkpoint_meta(self.network)

    @property
    def head(self) -> str:
        """The served head (sigmoid, relu, ...; `probabilities` or `scores` when emitted)."""
        return self.network.head

    @property
    def is_probability(self) -> bool:
        """Whether the served output lies in [0, 1]."""
        return is_probability(self.head)

    @property
    def output_range(self) -> tuple[float, float]:
        """The closed interval the served output lies in."""
        return head_range(self.head)

    @property
    def in_channels(self) -> int:
        """How many channels input images are converted to."""
        return self.network.in_channels

    @property
    def input(self) -> ImageInput:
        """How a decoded image becomes the network's input (channels, order, normalisation)."""
        return self.network.input

    @property
    def default_threshold(self) -> float:
        """The card's own threshold, or the conventional 0.5 when it carries none."""
        threshold = self.card.threshold
        return 0.5 if threshold is None else float(threshold)

    @property
    def mode(self) -> str:
        """`binary`, `multilabel` or `multiclass`, as the card's `output.mode` says."""
        return self.network.mode

    @property
    def classes(self) -> tuple[str, ...]:
        """The foreground class names in channel order; empty for a binary model."""
        return self.network.classes

    @property
    def multi_class(self) -> bool:
        """Whether the model answers one map per class (multilabel or multiclass)."""
        return self.mode != "binary"

    @functools.cached_property
    def class_defaults(self) -> dict[str, float]:
        """Each class's own default threshold (the checkpoint's per class, the card's, or 0.5)."""
        return default_thresholds(self.network)[0] if self.multi_class else {}


def model_digest(card_path: Path, card: ModelCard) -> str:
    """SHA-256 over the card and its network file: a threshold belongs to exactly these bytes."""
    if card.source.format == "native" and "source" not in json.loads(card_path.read_text()):
        return checkpoint_digest(card_path)  # a checkpoint pair keeps its digest (and thresholds)
    digest = hashlib.sha256(card_path.read_bytes())  # the card itself is at most 1 MiB
    with card.source_path(card_path).open("rb") as network:
        while chunk := network.read(1 << 20):  # streamed: a large network is never in memory
            digest.update(chunk)
    return digest.hexdigest()


def _referenced(cards: list[Path]) -> set[Path]:
    """Network files that some card names (not models of their own)."""
    files = set()
    for card_path in cards:
        try:
            card = load_card(card_path)
            files.add(card.source_path(card_path))
        except CheckpointError:
            continue
    return files


class ModelRegistry:
    """Name -> ServedModel for the life of the process; failed models keep their reason."""

    def __init__(
        self,
        models: dict[str, ServedModel],
        failed: dict[str, str] | None = None,
        folder: Path | None = None,
    ):
        self._models = models
        self._failed = dict(failed or {})
        self._folder = folder

    @classmethod
    def from_folder(
        cls,
        folder: Path,
        device: torch.device,
        *,
        max_model_bytes: int = DEFAULT_MAX_MODEL_BYTES,
        load_timeout_s: float = DEFAULT_LOAD_TIMEOUT_S,
    ) -> ModelRegistry:
        """Load every card (`*.json`, or a checkpoint pair) in `folder` onto `device`."""
        if not folder.is_dir():
            raise CheckpointError(f"{folder}: model folder not found; set UNET_MODEL_DIR")
        cards = sorted(folder.glob("*.json"))
        used = _referenced(cards)
        orphans = [
            weights
            for weights in sorted(folder.glob("*.safetensors"))
            if not weights.with_suffix(".json").exists() and weights.resolve() not in used
        ]
        registry = cls({}, {}, folder)
        for weights in orphans:
            registry._fail(
                model_name(weights.stem),
                f"{weights.with_suffix('.json')}: missing; a checkpoint needs its .json beside "
                "the weights",
            )
        by_name: dict[str, list[Path]] = {}
        for card_path in cards:
            by_name.setdefault(model_name(card_path.stem), []).append(card_path)
        for name, paths in by_name.items():
            if len(paths) > 1:
                files = " and ".join(repr(path.name) for path in paths)
                registry._fail(
                    name,
                    f"{files} are the same name after Unicode NFC normalisation, so a client "
                    "could not tell them apart; rename one",
                )
                continue
            card_path = paths[0]
            try:
                served = bounded(
                    functools.partial(_load, name, card_path, folder, device, max_model_bytes),
                    load_timeout_s,
                    card_path,
                )
            except Exception as error:  # any failure of one model leaves the others serving
                registry._fail(name, one_line(error, card_path))
                continue
            registry._models[name] = served
            log.info(
                "loaded model %s (%s, %s head) on %s",
                name,
                served.card.source.format,
                served.head,
                device,
            )
        if not registry._models:
            reasons = "; ".join(registry._failed.values()) or f"no model cards (*.json) in {folder}"
            raise CheckpointError(f"{folder}: no model could be loaded: {reasons}")
        return registry

    def _fail(self, name: str, reason: str) -> None:
        """Keep `name` as unavailable: the full reason in the log, a path-free one for clients."""
        log.error("model %s is unavailable: %s", name, reason)
        self._failed[name] = public_reason(reason, self._folder) if self._folder else reason

    def mark_unavailable(self, name: str, reason: str) -> None:
        """Stop serving model `name` (it failed after loading, e.g. in warm-up) with `reason`."""
        self._models.pop(name, None)
        self._fail(name, reason)

    def replace(self, served: ServedModel) -> None:
        """Serve `served` in place of the model of the same name (another precision)."""
        self._models[served.name] = served

    def get(self, name: str) -> ServedModel | None:
        """The model called `name` (in any Unicode normalisation), or None."""
        return self._models.get(model_name(name))

    def failure(self, name: str) -> str | None:
        """Why model `name` is unavailable, or None when it is served or unknown."""
        return self._failed.get(model_name(name))

    def failures(self) -> dict[str, str]:
        """Every model that failed to load, with its reason, by name."""
        return dict(sorted(self._failed.items()))

    def names(self) -> list[str]:
        """The served model names, sorted."""
        return sorted(self._models)

    def __iter__(self) -> Iterator[ServedModel]:
        return iter([self._models[name] for name in self.names()])


def _load(
    name: str, card_path: Path, folder: Path, device: torch.device, max_bytes: int
) -> ServedModel:
    """One model from its card, which must lie in `folder` (not a link out of it)."""
    if not card_path.resolve().is_relative_to(folder.resolve()):
        raise CardError(f"{card_path}: the card is a link out of the model folder; copy it in")
    network = load_predictor(card_path, device, max_bytes)
    digest = model_digest(card_path, network.card)
    # A card `unet quantize` wrote is INT8 already: served as it is, reported as what it is.
    quantized = bool((network.card.model_extra or {}).get("quantization"))
    precision: Literal["fp32", "int8"] = "int8" if quantized else "fp32"
    return ServedModel(name, card_path, network, digest, device, precision)
