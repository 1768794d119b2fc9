"""Drift on live traffic: each model's served scores against its active calibration's.

Every served image leaves a summary of a few thousand of its pixels, binned on the active
calibration's `ScoreProfile` (`model.calibration.drift`), in a sliding window of the last
`UNET_DRIFT_WINDOW` images; the window's PSI against the profile gives the status. The work runs
in the inference worker right after the pass, costs tens of microseconds, and the window is a few
kilobytes. Activating another calibration starts a new window; without an active calibration
(default or manual threshold) there is nothing to compare with: `no_reference`. Windows are saved
every SAVE_EVERY images and at shutdown, so they survive a restart.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from model.calibration.drift import DriftStatus, psi, sample, status_of, summarise
from model.calibration.schema import MultiClassReport, ScoreProfile
from model.inference.predict import Prediction
from service.ops.metrics import Metrics
from service.settings import Settings
from service.state.drift_windows import DriftWindows
from service.state.store import ThresholdStore

log = logging.getLogger(__name__)

SAVE_EVERY = 25  # images between saves of a window: a restart loses at most this many


@dataclass(frozen=True)
class DriftView:
    """How far one model's served scores have moved from its active calibration's."""

    status: DriftStatus  # no_reference: no active calibration with a score profile
    n_images: int  # served images in the window
    window: int  # the window's length in images
    score_distance: float | None  # PSI of the window against the profile; None: no images
    served_fraction: float | None  # mean foreground fraction served; None: no images
    calibration_fraction: float | None  # the same on the calibration set; None: no reference
    calibration_id: str | None  # the calibration compared with


@dataclass
class _Window:
    """One model's recent served images, each as (bin counts, pixels >= threshold, pixels)."""

    calibration_id: str
    profile: ScoreProfile
    size: int
    images: deque[tuple[np.ndarray, int, int]] = field(default_factory=deque)
    counts: np.ndarray = field(init=False)
    fractions: float = 0.0  # sum over the window of each image's foreground fraction
    unsaved: int = 0

    def __post_init__(self) -> None:
        self.counts = np.zeros(len(self.profile.fractions), dtype=np.int64)

    def add(self, counts: np.ndarray, above: int, pixels: int) -> None:
        """Slide the window by one image."""
        self.images.append((counts, above, pixels))
        self.counts += counts
        self.fractions += above / pixels
        while len(self.images) > self.size:
            old, old_above, old_pixels = self.images.popleft()
            self.counts -= old
            self.fractions -= old_above / old_pixels
        self.unsaved += 1

    def state(self) -> dict[str, Any]:
        """The window as JSON-able values."""
        return {"images": [[c.tolist(), a, p] for c, a, p in self.images]}

    def restore(self, state: dict[str, Any]) -> None:
        """Refill the window from `state()`; an entry of another bin layout is dropped."""
        for counts, above, pixels in state.get("images", [])[-self.size :]:
            if len(counts) == len(self.counts) and pixels > 0:
                self.add(np.asarray(counts, dtype=np.int64), int(above), int(pixels))
        self.unsaved = 0


class DriftMonitor:
    """Keeps every model's drift window and answers how far its traffic has moved."""

    def __init__(
        self, store: ThresholdStore, windows: DriftWindows, settings: Settings, metrics: Metrics
    ) -> None:
        """Empty windows; each is restored from `windows` the first time its model is watched."""
        self.store, self.saved, self.metrics = store, windows, metrics
        self.size, self.min_images = settings.drift_window, settings.drift_min_images
        self._windows: dict[str, _Window | None] = {}
        self._profiles: dict[tuple[str, str], ScoreProfile | None] = {}
        self._lock = threading.Lock()

    def watch(
        self, model: str, calibration_id: str | None, cls: str = ""
    ) -> Callable[[Prediction], Prediction]:
        """What the inference worker calls with each served prediction of `model` (on the loop).

        `calibration_id` is the active threshold's calibration; a new one starts a new window.
        `cls`: a multi-class model's class, watched in a window of its own against its class's
        profile (the prediction is then that class's map).
        """
        model = _key(model, cls)
        window = self._window(model, calibration_id)
        if window is None:
            return _unchanged

        def observe(prediction: Prediction) -> Prediction:
            pixels = sample(prediction.output)
            counts, above = summarise(window.profile, pixels)
            with self._lock:
                window.add(counts, above, pixels.size)
                due = window.unsaved >= SAVE_EVERY
                if due:
                    window.unsaved = 0
                    state = window.state()
                view = self._view(window)
            self._publish(model, view)
            if due:
                self._save(model, window.calibration_id, state)
            return prediction

        return observe

    def report(self, model: str, calibration_id: str | None, cls: str = "") -> DriftView:
        """The drift answer: status and the figures behind it (of class `cls`)."""
        model = _key(model, cls)
        window = self._window(model, calibration_id)
        if window is None:
            view = DriftView("no_reference", 0, self.size, None, None, None, None)
        else:
            with self._lock:
                view = self._view(window)
        self._publish(model, view)
        return view

    def status(self, model: str, calibration_id: str | None, cls: str = "") -> DriftStatus:
        """Just the status of `report`."""
        return self.report(model, calibration_id, cls).status

    def save_all(self) -> None:
        """Save every window (at shutdown)."""
        with self._lock:
            states = [
                (model, window.calibration_id, window.state())
                for model, window in self._windows.items()
                if window is not None
            ]
        for model, calibration_id, state in states:
            self._save(model, calibration_id, state)

    def _window(self, model: str, calibration_id: str | None) -> _Window | None:
        """The window of `model` for this calibration: kept, restored, or new (None: no profile)."""
        with self._lock:
            window = self._windows.get(model)
            if window is not None and window.calibration_id == calibration_id:
                return window
            if model in self._windows and window is None and calibration_id is None:
                return None
        profile = self._profile(model, calibration_id)
        fresh = None if profile is None else _Window(calibration_id or "", profile, self.size)
        if fresh is not None and model not in self._windows:  # first look since start-up
            saved = self.saved.load(model)
            if saved is not None and saved[0] == calibration_id:
                fresh.restore(saved[1])
        with self._lock:
            current = self._windows.get(model)
            if current is not None and current.calibration_id == calibration_id:
                return current  # another request made it meanwhile
            self._windows[model] = fresh
        if fresh is not None and fresh.images:
            log.info("model %s: drift window restored with %d images", model, len(fresh.images))
        return fresh

    def _profile(self, model: str, calibration_id: str | None) -> ScoreProfile | None:
        """The score profile of a stored calibration (cached; None for older reports)."""
        if calibration_id is None:
            return None
        name, _, cls = model.partition("/")
        if (calibration_id, cls) not in self._profiles:
            record = self.store.get_calibration(name, calibration_id)
            report: Any = None if record is None else record.report
            if isinstance(report, MultiClassReport):  # each class has its own profile
                report = report.classes.get(cls)
            profile = getattr(report, "score_profile", None)
            self._profiles[(calibration_id, cls)] = profile
        return self._profiles[(calibration_id, cls)]

    def _view(self, window: _Window) -> DriftView:
        """The answer for one window (call with the lock held)."""
        n = len(window.images)
        distance = psi(np.asarray(window.profile.fractions), window.counts) if n else None
        status: DriftStatus = "ok"
        if distance is not None and n >= self.min_images:
            status = status_of(distance)
        return DriftView(
            status=status,
            n_images=n,
            window=self.size,
            score_distance=distance,
            served_fraction=window.fractions / n if n else None,
            calibration_fraction=window.profile.foreground_fraction,
            calibration_id=window.calibration_id,
        )

    def _publish(self, model: str, view: DriftView) -> None:
        name, _, cls = model.partition("/")
        self.metrics.set_drift(
            name,
            view.status,
            view.score_distance,
            view.served_fraction,
            view.calibration_fraction,
            cls,
        )

    def _save(self, model: str, calibration_id: str, state: dict[str, Any]) -> None:
        try:
            self.saved.save(model, calibration_id, state)
        except Exception:  # a busy disk must not fail the request that happened to trigger it
            log.exception("model %s: could not save the drift window", model)


def _unchanged(prediction: Prediction) -> Prediction:
    return prediction


def _key(model: str, cls: str) -> str:
    """A window's name: the model's, or `model/class` (a model's name never holds a slash)."""
    return f"{model}/{cls}" if cls else model
