"""Figures (PNG) and Markdown tables of docs/activations.md, drawn from the study's JSON alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DEAD_UNITS_PNG = "activations-dead-units.png"
RELIABILITY_PNG = "activations-reliability.png"
COMPARED = ("relu", "leaky_relu")  # the dead-unit figure: ReLU against its direct answer
PROBABILITY_HEADS = ("sigmoid", "hard_sigmoid", "softmax")


def _figure(columns: int) -> tuple[Figure, list[Axes]]:
    # A Figure with its own canvas, never pyplot: no global state.
    figure = Figure(figsize=(5.2 * columns, 4.4), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, columns, squeeze=False)[0]
    return figure, list(axes)


def _sigmoid_runs(result: dict[str, Any], activation: str) -> list[dict[str, Any]]:
    return [r for r in result["runs"] if r["activation"] == activation and r["head"] == "sigmoid"]


def dead_units_figure(result: dict[str, Any], path: Path) -> Path:
    """Dead-unit share and share of outputs <= 0 per epoch, ReLU against Leaky ReLU, every seed."""
    figure, (dead, sparse) = _figure(2)
    for colour, activation in zip(("C3", "C0"), COMPARED, strict=True):
        for i, run in enumerate(_sigmoid_runs(result, activation)):
            epochs = [e["epoch"] for e in run["epochs"]]
            label = activation if i == 0 else None
            dead.plot(
                epochs,
                [100 * e["dead_fraction"] for e in run["epochs"]],
                colour,
                marker="o",
                markersize=3,
                alpha=0.8,
                label=label,
            )
            sparse.plot(
                epochs,
                [100 * e["sparsity"] for e in run["epochs"]],
                colour,
                marker="o",
                markersize=3,
                alpha=0.8,
                label=label,
            )
    dead.set(xlabel="epoch", ylabel="% of hidden units", title="dead: never > 0 on validation")
    sparse.set(xlabel="epoch", ylabel="% of hidden outputs", title="outputs <= 0 (sparsity)")
    for axes in (dead, sparse):
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    figure.suptitle("Hidden ReLU against Leaky ReLU (sigmoid head), one line per training seed")
    figure.savefig(path, format="png")
    return path


def pooled_reliability(runs: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(mean predicted, observed frequency) per reliability bin, pixel counts pooled over runs."""
    tables = [r[key]["reliability"] for r in runs if r.get(key, {}).get("reliability")]
    predicted, observed = [], []
    for rows in zip(*tables, strict=True):
        count = sum(row["count"] for row in rows)
        if count:
            predicted.append(
                sum(row["mean_predicted"] * row["count"] for row in rows if row["count"]) / count
            )
            observed.append(
                sum(row["observed_frequency"] * row["count"] for row in rows if row["count"])
                / count
            )
    return predicted, observed


def reliability_figure(result: dict[str, Any], path: Path) -> Path:
    """Reliability curves of the probability heads and of the ReLU head clipped to [0, 1]."""
    figure, (axes,) = _figure(1)
    axes.plot(
        [0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="perfectly calibrated"
    )
    relu_runs = [r for r in result["runs"] if r["activation"] == "relu"]
    for i, head in enumerate(PROBABILITY_HEADS):
        runs = [r for r in relu_runs if r["head"] == head]
        x, y = pooled_reliability(runs, "calibration")
        row = next(h for h in result["heads"] if h["head"] == head)
        axes.plot(
            x, y, f"C{i}", marker="o", markersize=4, label=f"{head} (ECE {row['ece']['mean']:.3f})"
        )
    clipped = [r for r in relu_runs if r["head"] == "relu"]
    x, y = pooled_reliability(clipped, "clipped_to_unit")
    if x:
        axes.plot(
            x,
            y,
            "C3",
            linestyle=":",
            marker="s",
            markersize=4,
            label="relu head, output clipped to [0, 1]",
        )
    axes.set(
        xlim=(0, 1),
        ylim=(0, 1),
        aspect="equal",
        xlabel="mean predicted score",
        ylabel="observed foreground frequency",
        title="Reliability on the validation set (all seeds pooled)",
    )
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="upper left")
    figure.savefig(path, format="png")
    return path


def write_plots(result: dict[str, Any], folder: Path) -> list[Path]:
    """Write the study's figures into `folder` and return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    return [
        dead_units_figure(result, folder / DEAD_UNITS_PNG),
        reliability_figure(result, folder / RELIABILITY_PNG),
    ]


def _cell(stat: dict[str, float | None], digits: int = 3, scale: float = 1.0) -> str:
    if stat["mean"] is None:
        return "n/a"
    sd = stat["sd"] or 0.0
    return f"{scale * stat['mean']:.{digits}f} ± {scale * sd:.{digits}f}"


def activation_table(result: dict[str, Any]) -> str:
    """The hidden-activation sweep as a Markdown table (mean ± sd over seeds)."""
    lines = [
        "| hidden | Dice (calibrated) | Dice at 0.5 | AUC | dead % (end) | dead % (max) "
        "| mean | std | s / epoch |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["activations"]:
        lines.append(
            f"| {row['activation']} | {_cell(row['dice_calibrated'])} | {_cell(row['dice_at_0.5'])}"
            f" | {_cell(row['auc'], 4)} | {_cell(row['dead_fraction'], 1, 100)}"
            f" | {_cell(row['max_dead_fraction'], 1, 100)} | {_cell(row['activation_mean'], 2)}"
            f" | {_cell(row['activation_std'], 2)} | {_cell(row['seconds_per_epoch'], 2)} |"
        )
    return "\n".join(lines)


def head_table(result: dict[str, Any]) -> str:
    """The output-head sweep as a Markdown table (mean ± sd over seeds)."""
    lines = [
        "| head | probability | Dice (calibrated) | Dice at 0.5 | AUC | tied at min % "
        "| Brier | ECE |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in result["heads"]:
        lines.append(
            f"| {row['head']} | {'yes' if row['is_probability'] else 'no'}"
            f" | {_cell(row['dice_calibrated'])} | {_cell(row['dice_at_0.5'])}"
            f" | {_cell(row['auc'], 4)} | {_cell(row['tied_at_min_fraction'], 1, 100)}"
            f" | {_cell(row['brier'], 4)} | {_cell(row['ece'], 4)} |"
        )
    return "\n".join(lines)


def tables(result: dict[str, Any]) -> str:
    """Both Markdown tables, as docs/activations.md shows them."""
    return activation_table(result) + "\n\n" + head_table(result) + "\n"
