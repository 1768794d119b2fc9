"""Per-class calibration: one streaming pass, one `ScoreHistogram` per class (one-vs-rest).

A multilabel model's classes are independent binary problems; a multiclass model's class k is
"label k against everything else". Each class gets the full binary report
(`model.calibration.report.build_report`) with its own criterion, so its own strategy, target and
costs. Alongside, the same pass counts what the summary compares the chosen thresholds with:

* exact confusion matrices of the rules known before the pass: plain argmax (multiclass,
  background included) and every threshold at 0.5 (`model.calibration.decision`);
* for multiclass, a joint histogram of (true label, argmax label, every class's score level) on a
  fixed grid of `grid_levels` levels per class, uniform in logit over [-12, 12]: the chosen
  thresholds are known only after the pass, and under the decision rule one class's pixels depend
  on every other class's score, so the rule's Dice at them and its disagreement with argmax are
  read off this grid (a threshold is moved down to its level's lower edge). Where every chosen
  threshold is above 0.5 at most one softmax share can pass, the rule is one-vs-rest, and the
  Dice is exact (each class report's own). The grid holds at most `grid_cells` counts, so its
  resolution falls as K grows (256 levels for K <= 2, 40 for K = 3).

Memory is fixed when the object is made: it does not grow with images or pixels.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from model.calibration.decision import argmax_labels, confusion, decide, dice_per_class
from model.calibration.histogram import CHUNK, ScoreHistogram
from model.calibration.report import build_report
from model.calibration.schema import CalibrationReport, ClassDice, ClassSummary, MultiClassReport
from model.calibration.strategies import Criterion
from model.errors import CalibrationError, LabelError, UnknownClassError

MODES: tuple[str, ...] = ("multilabel", "multiclass")
GRID_LOGIT = 12.0  # the grid resolves logits in [-12, 12]; beyond, one open level per side
MAX_GRID_LEVELS = 256
MIN_GRID_LEVELS = 4  # below this the grid says nothing; the estimate is left out


def grid_levels_for(n_classes: int, max_cells: int) -> int:
    """Levels per class such that (K + 1)**2 * levels**K counts fit in `max_cells`."""
    room = max_cells / (n_classes + 1) ** 2
    levels = math.floor(room ** (1.0 / n_classes) + 1e-9)
    return min(MAX_GRID_LEVELS, levels)


class ClassHistograms:
    """Streaming counts of a multi-class calibration set: one histogram per class and the rules'."""

    def __init__(
        self,
        classes: Sequence[str],
        mode: str = "multiclass",
        scale: str = "probability",
        *,
        n_bootstrap: int = 200,
        max_images_kept: int = 256,
        seed: int = 0,
        grid_cells: int = 1 << 21,
    ) -> None:
        """Empty counts for `classes` (K names, channel order) of a `mode` model."""
        if mode not in MODES:
            raise CalibrationError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        if not classes or len(set(classes)) != len(classes):
            raise CalibrationError(f"classes {list(classes)} must be one or more distinct names")
        if mode == "multiclass" and scale != "probability":
            raise CalibrationError("a multiclass model's shares are probabilities; use that scale")
        self.classes = tuple(classes)
        self.mode = mode
        self.scale = scale
        self.histograms = {
            name: ScoreHistogram(
                scale, n_bootstrap=n_bootstrap, max_images_kept=max_images_kept, seed=seed + i
            )
            for i, name in enumerate(self.classes)
        }
        k = len(self.classes)
        size = (k + 1) ** 2
        self.argmax = np.zeros((k + 1, k + 1), dtype=np.int64) if mode == "multiclass" else None
        self.fixed = np.zeros((k + 1, k + 1), dtype=np.int64) if mode == "multiclass" else None
        levels = grid_levels_for(k, grid_cells) if mode == "multiclass" else 0
        self.grid_levels = levels if levels >= MIN_GRID_LEVELS else None
        self.grid: NDArray[np.int64] | None = None
        if self.grid_levels is not None:
            self._edges = np.linspace(-GRID_LOGIT, GRID_LOGIT, self.grid_levels - 1)
            self.grid = np.zeros(size * self.grid_levels**k, dtype=np.int64)
        self.n_images = 0
        self.n_pixels = 0

    @property
    def n_classes(self) -> int:
        """K, the number of foreground classes."""
        return len(self.classes)

    def update(
        self,
        maps: ArrayLike,
        target: ArrayLike,
        *,
        logits: ArrayLike | None = None,
        background: ArrayLike | None = None,
    ) -> None:
        """Count one image: class maps (K, H, W) in class order and its target.

        The target is a label image (H, W) of 0..K for multiclass (0 background, k the k-th
        class), a stack of K binary masks (K, H, W) for multilabel. `logits` (K, H, W), when
        given, are the order-keeping scores binned instead of the maps (sigmoid or softmax
        heads); `background` is the background channel's map (default ``1 - sum(maps)``).
        An image is checked whole before anything is counted.
        """
        where = f"image {self.n_images + 1}"
        p = np.asarray(maps)
        k = self.n_classes
        if p.ndim != 3 or p.shape[0] != k:
            raise CalibrationError(
                f"{where}: class maps have shape {p.shape}; give ({k}, H, W), one map per class "
                f"({', '.join(self.classes)})"
            )
        z = None if logits is None else np.asarray(logits)
        if z is not None and z.shape != p.shape:
            raise CalibrationError(f"{where}: logits {z.shape} and maps {p.shape} differ in shape")
        masks = self._masks(target, p.shape, where)
        for values in (p, z):
            if values is not None and not np.isfinite(values).all():
                raise CalibrationError(f"{where}: the class maps hold NaN or infinite scores")
        if self.scale == "probability" and (p.min() < 0 or p.max() > 1):
            raise CalibrationError(
                f"{where}: class maps span [{float(p.min()):.6g}, {float(p.max()):.6g}], outside "
                "[0, 1]; give probabilities (or an unbounded scale for a multilabel model)"
            )
        for i, name in enumerate(self.classes):
            scores = p[i] if z is None else z[i]
            self.histograms[name].update(scores, masks[i], logits=z is not None)
        if self.mode == "multiclass":
            labels = np.asarray(target)
            self._count_rules(p, z, labels, background)
        self.n_images += 1
        self.n_pixels += p[0].size

    def _masks(self, target: ArrayLike, shape: tuple[int, ...], where: str) -> list[np.ndarray]:
        """Each class's binary mask from the target, after checking it fits the classes."""
        y = np.asarray(target)
        k = self.n_classes
        if self.mode == "multilabel":
            if y.shape != shape:
                raise LabelError(
                    f"{where}: {y.shape[0] if y.ndim == 3 else 'no'} class masks of shape "
                    f"{y.shape[-2:]} for class maps {shape}; give one mask per class "
                    f"({', '.join(self.classes)}) at the image's size"
                )
            return [y[i] != 0 for i in range(k)]
        if y.shape != shape[1:]:
            raise LabelError(
                f"{where}: the label image is {y.shape} but the maps are {shape[1:]}; give one "
                "label image (H, W) at the image's size"
            )
        if not (np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_):
            raise LabelError(f"{where}: a label image holds integers 0..{k}, got dtype {y.dtype}")
        low, high = int(y.min()), int(y.max())
        if low < 0 or high > k:
            bad = high if high > k else low
            raise LabelError(
                f"{where}: label value {bad} is outside 0..{k} (0 background, "
                + ", ".join(f"{i + 1} {name}" for i, name in enumerate(self.classes))
                + "); relabel the image or fix the model's classes"
            )
        return [y == i + 1 for i in range(k)]

    def _count_rules(
        self,
        p: np.ndarray,
        z: np.ndarray | None,
        labels: np.ndarray,
        background: ArrayLike | None,
    ) -> None:
        """Exact argmax and 0.5 confusions, and the joint grid, in chunks of pixels."""
        assert self.argmax is not None and self.fixed is not None
        k = self.n_classes
        flat = p.reshape(k, -1)
        logit = None if z is None else z.reshape(k, -1)
        y = labels.reshape(-1).astype(np.int64)
        bg = None if background is None else np.asarray(background).reshape(-1)
        for start in range(0, y.size, CHUNK):
            part = slice(start, start + CHUNK)
            pc, yc = flat[:, part], y[part]
            amax = argmax_labels(pc, None if bg is None else bg[part]).astype(np.int64)
            self.argmax += confusion(yc, amax, k)
            self.fixed += confusion(yc, decide(pc, [0.5] * k), k)
            if self.grid is not None and self.grid_levels is not None:
                g = self.grid_levels
                scores = _logit(pc) if logit is None else logit[:, part].astype(np.float64)
                cell = np.zeros(yc.size, dtype=np.int64)
                for i in range(k):
                    level = np.searchsorted(self._edges, scores[i], side="right")
                    cell += level * g**i
                code = (yc * (k + 1) + amax) * g**k + cell
                self.grid += np.bincount(code, minlength=self.grid.size)

    def rule_on_grid(self, thresholds: Sequence[float]) -> tuple[NDArray[np.int64], float] | None:
        """The decision rule at `thresholds` read off the grid: its confusion and argmax share.

        None where there is no grid (multilabel, or too many classes for one).
        """
        if self.grid is None or self.grid_levels is None:
            return None
        k, g = self.n_classes, self.grid_levels
        t = np.asarray(thresholds, dtype=np.float64)
        t_level = np.searchsorted(self._edges, _logit(np.clip(t, 0.0, 1.0)), side="right")
        t_level[t > 1.0] = g  # above every score: nothing passes
        levels = np.indices((g,) * k).reshape(k, -1)[::-1]  # level of class i in cell c
        predicted = decide(levels, t_level).astype(np.int64)
        counts = self.grid.reshape(k + 1, k + 1, g**k)
        by_label = counts.sum(axis=1)  # (label, cell)
        matrix = np.zeros((k + 1, k + 1), dtype=np.int64)
        for label in range(k + 1):
            matrix[label] = np.bincount(predicted, weights=by_label[label], minlength=k + 1)
        by_argmax = counts.sum(axis=0)  # (argmax, cell)
        differ = by_argmax[np.arange(k + 1)[:, None] != predicted[None, :]].sum()
        return matrix, float(differ) / max(self.n_pixels, 1)

    @property
    def nbytes(self) -> int:
        """Memory held, in bytes; fixed when the object is made."""
        held = sum(h.nbytes for h in self.histograms.values())
        for array in (self.argmax, self.fixed, self.grid):
            held += 0 if array is None else array.nbytes
        return held


def _logit(p: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)) in float64, -inf at 0 and +inf at 1."""
    q = np.asarray(p, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.log(q) - np.log1p(-q)


def _criteria(
    classes: Sequence[str], criteria: Criterion | Mapping[str, Criterion] | None
) -> dict[str, Criterion]:
    """One criterion per class: the same for all, or per name (default Criterion() for the rest)."""
    if criteria is None or isinstance(criteria, Criterion):
        return {name: criteria or Criterion() for name in classes}
    unknown = [name for name in criteria if name not in classes]
    if unknown:
        raise UnknownClassError(
            f"no class {unknown[0]!r} in this model; its classes are {', '.join(classes)}"
        )
    return {name: criteria.get(name, Criterion()) for name in classes}


def build_class_report(
    counts: ClassHistograms,
    criteria: Criterion | Mapping[str, Criterion] | None = None,
    reference_auc: Mapping[str, float] | None = None,
) -> MultiClassReport:
    """The per-class report of filled counts: each class's binary report, and the summary."""
    if counts.n_images == 0:
        raise CalibrationError("the calibration set is empty: give at least one image and mask")
    chosen = _criteria(counts.classes, criteria)
    reports: dict[str, CalibrationReport] = {}
    for name in counts.classes:
        try:
            reports[name] = build_report(
                counts.histograms[name], chosen[name], (reference_auc or {}).get(name)
            )
        except CalibrationError as error:
            raise type(error)(f"class {name!r}: {error}") from None
    return MultiClassReport(
        mode=counts.mode,  # type: ignore[arg-type]
        classes=reports,
        n_images=counts.n_images,
        n_pixels=counts.n_pixels,
        summary=_summary(counts, reports),
    )


def _dice(classes: Sequence[str], values: Iterable[float], exact: bool) -> ClassDice:
    per_class = {name: float(v) for name, v in zip(classes, values, strict=True)}
    return ClassDice(
        per_class=per_class, macro=float(np.mean(list(per_class.values()))), exact=exact
    )


def _summary(counts: ClassHistograms, reports: Mapping[str, CalibrationReport]) -> ClassSummary:
    names = counts.classes
    thresholds = {name: reports[name].threshold for name in names}
    if counts.mode == "multilabel":  # independent channels: each class report says it all
        dice = {
            "calibrated": _dice(names, (reports[n].chosen.f1 for n in names), True),
            "fixed_0.5": _dice(
                names, (reports[n].operating_points["fixed_0.5"].f1 for n in names), True
            ),
        }
        return ClassSummary(
            thresholds=thresholds, dice=dice, argmax_disagreement=None, grid_levels=None
        )
    assert counts.argmax is not None and counts.fixed is not None
    dice = {
        "argmax": _dice(names, dice_per_class(counts.argmax), True),
        "fixed_0.5": _dice(names, dice_per_class(counts.fixed), True),
    }
    on_grid = counts.rule_on_grid(list(thresholds.values()))
    disagreement = None if on_grid is None else on_grid[1]
    if all(t > 0.5 for t in thresholds.values()):
        # At most one share passes: the rule is one-vs-rest, which each class report measured.
        dice["calibrated"] = _dice(names, (reports[n].chosen.f1 for n in names), True)
    elif on_grid is not None:
        dice["calibrated"] = _dice(names, dice_per_class(on_grid[0]), False)
    return ClassSummary(
        thresholds=thresholds,
        dice=dict(sorted(dice.items(), key=lambda item: _ORDER.index(item[0]))),
        argmax_disagreement=disagreement,
        grid_levels=counts.grid_levels,
    )


_ORDER = ("calibrated", "argmax", "fixed_0.5")


def calibrate_class_arrays(
    items: Iterable[tuple[Any, Any] | tuple[Any, Any, Any]],
    classes: Sequence[str],
    mode: str = "multiclass",
    criteria: Criterion | Mapping[str, Criterion] | None = None,
    *,
    scale: str = "probability",
    n_bootstrap: int = 200,
    seed: int = 0,
) -> MultiClassReport:
    """Calibrate every class in one pass over (maps, target) or (maps, target, logits) items."""
    counts = ClassHistograms(classes, mode, scale, n_bootstrap=n_bootstrap, seed=seed)
    for item in items:
        maps, target, *rest = item
        counts.update(maps, target, logits=rest[0] if rest else None)
    return build_class_report(counts, criteria)
