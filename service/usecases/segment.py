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

from model.calibration.recalibration import MonotoneMap
from model.data.decoding import image_from_bytes, read_header
from model.errors import DatasetError, ImageTooLargeError
from model.inference.predict import Prediction
from service.container import Services
from service.inference.registry import ServedModel
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
    """One segmented image: its input, the head's output for every pixel, and the cut."""

    model: str
    digest: str  # the checkpoint that segmented it
    cut: Cut
    image: np.ndarray  # float32 (C, H, W), the model's input
    scores: np.ndarray  # float32 (H, W), the head's output
    calibration_id: str | None = None  # the calibration in force, which drift watches against
    # With a recalibration in force, `scores` and `cut` are on its scale; the mask is cut on the
    # head's own output at the head's own threshold, so it is the same as without.
    raw: tuple[np.ndarray, float] | None = None

    @functools.cached_property
    def mask(self) -> np.ndarray:
        """Boolean (H, W): foreground where the score is at or above the cut."""
        if self.raw is not None:
            return self.raw[0] >= self.raw[1]
        return self.scores >= self.cut.value

    @property
    def foreground_fraction(self) -> float:
        """The share of pixels in the foreground."""
        return float(self.mask.mean())


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
    stages = _Finish(served, cut, pixels, observe, encode, active.calibration_id, rescale, raw_cut)
    return await services.engine.run(served, pixels, stages)


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
    cut: Cut
    pixels: np.ndarray
    observe: Callable[[Prediction], Prediction]
    encode: Encode[T]
    calibration_id: str | None
    rescale: MonotoneMap | None = None  # the recalibration in force, applied to the scores
    raw_cut: float | None = None  # the cut on the head's own scale

    def __call__(self, prediction: Prediction) -> Encoded[T]:
        """The encoded segmentation of the finished (finite) prediction."""
        self.observe(prediction)
        scores, raw = prediction.output, None
        if self.rescale is not None and self.raw_cut is not None:
            scores, raw = self.rescale.probabilities(scores), (scores, self.raw_cut)
        result = Segmentation(
            self.served.name,
            self.served.digest,
            self.cut,
            self.pixels,
            scores,
            self.calibration_id,
            raw,
        )
        return Encoded(result, self.encode(result))


def _itself(value: T) -> T:
    return value
