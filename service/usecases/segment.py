"""Segmenting one image: the use case behind every inference answer, whoever asks for it.

The stages, named as LitServe names its own:

- decode: the uploaded bytes become the model's (C, H, W) input, on the event loop when small
  and in a worker thread when large;
- threshold: the one in force for the served checkpoint (its digest), or the request's own;
- predict: the engine's forward pass, in its worker thread;
- observe: the prediction joins the model's drift window;
- encode: the caller's named stage turns the `Segmentation` into its answer (a PNG mask, a score
  map, JSON).

Observe and encode run in the inference worker right after the pass: a trip back through the
event loop to a second thread cost 7% of a small request's time (docs/benchmarks.md, "Serving").
The HTTP routes, the Ray deployment (which serves those routes) and the tests all call here.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Literal, Protocol, TypeVar

import numpy as np
from anyio import to_thread

from model.calibration.decision import decide
from model.calibration.recalibration import MonotoneMap
from model.data.decoding import image_from_bytes, read_header
from model.errors import DatasetError, ImageTooLargeError
from model.inference.predict import ClassPrediction, Prediction
from service.container import Services
from service.inference.registry import ServedModel
from service.ops import tracing
from service.state.errors import StoreUnavailable
from service.usecases.recalibrated import NONE, CalibrationExtras, guarantee_state
from service.usecases.thresholds import check_threshold

# Decoding a 256 x 256 PNG takes under a millisecond, less than what handing it to a thread and
# back costs under load; larger images (declared in their header) decode in a worker thread.
INLINE_PIXELS = 512 * 512
CutSource = Literal["default", "calibration", "manual", "request"]
T = TypeVar("T")


class ImageRejected(ValueError):
    """An image that cannot be segmented; the message names it and says what to fix."""


class UnreadableImage(ImageRejected):
    """Bytes that do not decode to an image the model can take."""


class ImageTooLarge(ImageRejected):
    """An image over the pixel limit (UNET_MAX_IMAGE_PIXELS) or a decompression bomb."""


class ImageSource(Protocol):
    """Where an image's encoded bytes come from: a request's upload, a file, memory."""

    @property
    def name(self) -> str:
        """What to call the image in messages (a file name)."""
        ...

    async def read(self) -> bytes:
        """The encoded image (PNG, JPEG, TIFF, BMP or GIF)."""
        ...


@dataclass(frozen=True)
class ImageBytes:
    """An encoded image already in memory."""

    data: bytes
    name: str = "image"

    async def read(self) -> bytes:
        """The bytes themselves."""
        return self.data


@dataclass(frozen=True)
class Cut:
    """The threshold an image is segmented with, and where it came from."""

    value: float
    source: CutSource
    stale: bool = False  # the store is failing: the threshold in force is the last one known
    guarantee: str | None = None  # present / withdrawn (drift alert); None: none claimed


@dataclass(frozen=True)
class Segmentation:
    """One segmented image: its input, the head's output for every pixel, and the cut(s).

    A binary model has one map (H, W) and one cut; a multi-class model (`classes` non-empty) has
    one map per class (K, H, W) in class order and one cut per class (`cuts`), and its `mask` is
    per class: multiclass by the decision rule (`model.calibration.decision.decide`), multilabel
    each map at its own cut.
    """

    model: str
    digest: str  # the checkpoint that segmented it
    cut: Cut  # binary: the cut; multi-class: the first class's (each class's is in `cuts`)
    image: np.ndarray  # float32 (C, H, W), the model's input
    scores: np.ndarray  # float32 (H, W), the head's output; multi-class (K, H, W)
    calibration_id: str | None = None  # the calibration in force, which drift watches against
    classes: tuple[str, ...] = ()  # a multi-class model's class names; () for binary
    cuts: tuple[Cut, ...] = ()  # one per class, in class order; () for binary
    mode: str = "binary"  # binary, multilabel or multiclass

    # With a recalibration in force, `scores` and `cut` are on its scale; the mask is cut on the
    # head's own output at the head's own threshold, so it is the same as without.
    raw: tuple[np.ndarray, float] | None = None

    @property
    def multi_class(self) -> bool:
        """Whether this is a multi-class answer (K maps and K cuts)."""
        return bool(self.classes)

    @property
    def thresholds(self) -> tuple[float, ...]:
        """Every cut's value: one for binary, K in class order for a multi-class answer."""
        return tuple(cut.value for cut in self.cuts) if self.cuts else (self.cut.value,)

    @functools.cached_property
    def labels(self) -> np.ndarray:
        """Multiclass: uint8 (H, W), 0 background, k the k-th class, by the decision rule."""
        return decide(self.scores, self.thresholds)

    @functools.cached_property
    def mask(self) -> np.ndarray:
        """Boolean (H, W): foreground where the score is at or above the cut.

        Multi-class: (K, H, W), class k where the decision rule labels it k (multiclass) or
        where its own map passes its own cut (multilabel, where classes may overlap).
        """
        if self.raw is not None:  # binary with a recalibration in force
            return self.raw[0] >= self.raw[1]
        if not self.multi_class:
            return self.scores >= self.cut.value
        if self.mode == "multiclass":
            index = np.arange(1, len(self.classes) + 1, dtype=self.labels.dtype)
            return self.labels[None] == index[:, None, None]
        cuts = np.asarray(self.thresholds, dtype=np.float64)[:, None, None]
        return self.scores >= cuts

    @property
    def foreground_fraction(self) -> float:
        """The share of pixels in the foreground (multi-class: in any class)."""
        mask = self.mask.any(axis=0) if self.multi_class else self.mask
        return float(mask.mean())

    def class_index(self, name: str) -> int:
        """The position of class `name` in `classes` (the route checked it exists)."""
        return self.classes.index(name)


@dataclass(frozen=True)
class Encoded(Generic[T]):
    """A segmentation and what the caller's encode stage made of it."""

    segmentation: Segmentation
    body: T


Encode = Callable[[Segmentation], T]


async def segment(
    services: Services, served: ServedModel, image: ImageSource, threshold: float | None = None
) -> Segmentation:
    """Segment `image` with `served`, at `threshold` or else the threshold in force."""
    encoded = await segment_encoded(services, served, image, _itself, threshold)
    return encoded.body


async def segment_encoded(
    services: Services,
    served: ServedModel,
    image: ImageSource,
    encode: Encode[T],
    threshold: float | None = None,
) -> Encoded[T]:
    """Segment `image` and run `encode` on the result in the inference worker.

    Raises ThresholdOutOfRange (before reading the image), ImageRejected, and the engine's
    errors (`service.inference.errors`).
    """
    if threshold is not None:
        check_threshold(served, threshold)
    pixels = await decode(served, image, services.settings.max_image_pixels)
    return await _segment(services, served, pixels, encode, threshold)


async def segment_pixels(
    services: Services,
    served: ServedModel,
    pixels: np.ndarray,
    encode: Encode[T],
    threshold: float | None = None,
) -> Encoded[T]:
    """Segment already decoded (C, H, W) input, as `segment_encoded` does after decoding."""
    if threshold is not None:
        check_threshold(served, threshold)
    return await _segment(services, served, pixels, encode, threshold)


async def _segment(
    services: Services,
    served: ServedModel,
    pixels: np.ndarray,
    encode: Encode[T],
    threshold: float | None,
) -> Encoded[T]:
    """Segment decoded input at an already checked `threshold` (None: the one in force)."""
    if served.multi_class:
        return await _segment_classes(services, served, pixels, encode, threshold)
    active = await services.active_threshold_async(served)
    extras = await _extras(services, served.name, active.calibration_id)
    rescale = extras.rescale
    if threshold is not None:
        raw_cut = threshold if rescale is None else rescale.inverse(threshold)
        cut = Cut(threshold, "request")
    else:
        raw_cut = active.value
        shown = active.value if rescale is None else rescale.threshold(active.value)
        state = guarantee_state(extras, services.drift.status(served.name, active.calibration_id))
        cut = Cut(shown, active.source, active.stale, state)
    # Drift watches every served image against the active calibration, whatever the cut.
    try:
        observe = services.drift.watch(served.name, active.calibration_id)
    except StoreUnavailable:  # a new calibration's profile is unreadable now: serve unwatched
        observe = _itself
    stages = _Finish(
        served, (cut,), pixels, observe, encode, active.calibration_id, rescale, raw_cut
    )
    return await services.engine.run(served, pixels, stages)


async def _segment_classes(
    services: Services,
    served: ServedModel,
    pixels: np.ndarray,
    encode: Encode[T],
    threshold: float | None,
) -> Encoded[T]:
    """A multi-class model's K maps, cut at each class's threshold (or the request's, for all).

    Each class's map joins its own drift window, against its class's profile in the calibration
    in force for that class.
    """
    active = await services.class_thresholds_async(served)
    if threshold is not None:
        cuts = tuple(Cut(threshold, "request") for _ in served.classes)
    else:
        cuts = tuple(Cut(a.value, a.source, a.stale) for a in active.values())
    calibrations = {a.calibration_id for a in active.values()}
    calibration_id = calibrations.pop() if len(calibrations) == 1 else None
    try:
        watches = [
            services.drift.watch(served.name, a.calibration_id, name) for name, a in active.items()
        ]
        observe: Callable[[Prediction], Prediction] = _EachClass(watches)
    except StoreUnavailable:
        observe = _itself
    stages = _Finish(served, cuts, pixels, observe, encode, calibration_id)
    return await services.engine.run(served, pixels, stages)


@dataclass(frozen=True)
class _EachClass:
    """The drift watch of every class: class k's map joins class k's window."""

    watches: list[Callable[[Prediction], Prediction]]

    def __call__(self, prediction: Prediction) -> Prediction:
        """Observe each class's map (a ClassPrediction's planes), in class order."""
        for k, watch in enumerate(self.watches):
            watch(Prediction(prediction.output[k], prediction.logits[k]))
        return prediction


async def _extras(services: Services, model: str, calibration_id: str | None) -> CalibrationExtras:
    """What the calibration in force adds; its first read goes to the store off the loop."""
    known = services.extras.cached(model, calibration_id)
    if known is not None:
        return known
    try:
        return await to_thread.run_sync(services.extras.of, model, calibration_id)
    except StoreUnavailable:
        return NONE  # served as the head answers until the store is back


async def decode(served: ServedModel, image: ImageSource, max_pixels: int) -> np.ndarray:
    """`image` as `served`'s (C, H, W) float input; ImageRejected when it cannot be."""
    data = await image.read()
    name = image.name

    def decoded() -> np.ndarray:
        return image_from_bytes(data, served.input, name, max_pixels)

    try:
        with tracing.span("decode", **{"unet.model": served.name, "unet.bytes": len(data)}):
            header = read_header(data, name)
            if header.width * header.height <= INLINE_PIXELS:
                return decoded()
            return await to_thread.run_sync(decoded)
    except ImageTooLargeError as error:
        raise ImageTooLarge(str(error)) from None
    except DatasetError as error:
        raise UnreadableImage(str(error)) from None


@dataclass(frozen=True)
class _Finish(Generic[T]):
    """What the inference worker does with one image's prediction: observe, then encode."""

    served: ServedModel
    cuts: tuple[Cut, ...]  # one for a binary model, one per class for a multi-class one
    pixels: np.ndarray
    observe: Callable[[Prediction], Prediction]
    encode: Encode[T]
    calibration_id: str | None
    rescale: MonotoneMap | None = None  # the recalibration in force, applied to the scores
    raw_cut: float | None = None  # the cut on the head's own scale

    def __call__(self, prediction: Prediction | ClassPrediction) -> Encoded[T]:
        """The encoded segmentation of the finished (finite) prediction."""
        served = self.served
        self.observe(prediction)  # type: ignore[arg-type]  # a class watch reads K planes
        multi = served.multi_class
        scores, raw = prediction.output, None
        if self.rescale is not None and self.raw_cut is not None:
            scores, raw = self.rescale.probabilities(scores), (scores, self.raw_cut)
        result = Segmentation(
            served.name,
            served.digest,
            self.cuts[0],
            self.pixels,
            scores,
            self.calibration_id,
            classes=served.classes if multi else (),
            cuts=self.cuts if multi else (),
            mode=served.mode,
            raw=raw,
        )
        return Encoded(result, self.encode(result))


def _itself(value: T) -> T:
    return value
