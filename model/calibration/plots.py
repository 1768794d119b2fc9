"""The ROC plot of a calibration report, rendered to PNG with matplotlib's Agg backend."""

from __future__ import annotations

import io

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from model.calibration.schema import CalibrationReport, OperatingPoint

FIXED = "fixed_0.5"
ZOOM_MIN = 0.05  # the zoomed panel shows at least this much FPR
ZOOM_MARGIN = 0.1  # and this much TPR below the lowest marked point


def roc_png(report: CalibrationReport) -> bytes:
    """The report's ROC curve with AUC, its chosen and its 0.5 operating points marked, as PNG."""
    # A Figure with its own canvas, never pyplot: no global state, safe in worker threads.
    strategy, threshold, auc = report.strategy, report.threshold, report.auc
    chosen = report.operating_points.get(strategy)
    fixed = report.operating_points.get(FIXED)
    figure = Figure(figsize=(10, 4.8), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    full, zoom = figure.subplots(1, 2)
    target = f", target {report.target:g}" if report.target is not None else ""
    figure.suptitle(
        f"ROC of {report.n_images} images ({report.n_pixels} pixels): "
        f"AUC {auc:.4f}; threshold {threshold:.4g} by {strategy}{target}"
    )
    for axes in (full, zoom):
        axes.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=1, label="chance")
        axes.plot(
            report.roc.fpr, report.roc.tpr, color="C0", linewidth=2, label=f"ROC, AUC = {auc:.4f}"
        )
        if chosen is not None:
            _mark(axes, chosen, "o", "C3", f"chosen ({strategy}), t = {threshold:.4g}")
        if fixed is not None:
            _mark(axes, fixed, "s", "C2", "t = 0.5")
        axes.set_xlabel("false positive rate")
        axes.set_ylabel("true positive rate")
        axes.grid(alpha=0.3)
    full.set(xlim=(0, 1), ylim=(0, 1.005), title="full curve", aspect="equal")
    full.legend(loc="lower right", fontsize=8)
    # Good models keep their operating points in the top-left corner, where the full view
    # squeezes them together; the second panel zooms to them.
    marked = [p for p in (chosen, fixed) if p is not None]
    right = min(1.0, max([ZOOM_MIN, *(2 * p.fpr for p in marked)]))
    bottom = max(0.0, min([p.tpr for p in marked], default=0.5) - ZOOM_MARGIN)
    zoom.set(xlim=(0, right), ylim=(bottom, 1.002), title="operating points")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _mark(axes: Axes, point: OperatingPoint, marker: str, colour: str, label: str) -> None:
    axes.scatter(
        [point.fpr],
        [point.tpr],
        marker=marker,
        s=60,
        color=colour,
        edgecolors="black",
        zorder=3,
        label=f"{label}: TPR {point.tpr:.3f}, FPR {point.fpr:.3f}",
    )
