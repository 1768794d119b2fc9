"""The activation study's quick mode: real training, calibration and evaluation, JSON shape."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from benchmarks.activation_report import activation_table, head_table
from benchmarks.activations import QUICK, combinations, main
from model.network.activations import ACTIVATIONS
from model.network.heads import HEADS, is_probability

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Eleven real training runs, even tiny ones, take 10-25 s on a shared 2-core machine.
pytestmark = pytest.mark.slow


def numbers(value: Any, path: str = "") -> list[tuple[str, float]]:
    """Every number in a JSON value, with where it sits."""
    if isinstance(value, dict):
        return [n for k, v in value.items() for n in numbers(v, f"{path}.{k}")]
    if isinstance(value, list):
        return [n for i, v in enumerate(value) for n in numbers(v, f"{path}[{i}]")]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return [(path, float(value))]
    return []


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path, str]:
    folder = tmp_path_factory.mktemp("activations")
    out = folder / "study.json"
    result = main(["--quick", "--out", str(out), "--plots", str(folder)])
    assert result is not None
    return result, folder, out.read_text()


def test_one_row_per_activation_and_per_head(quick: tuple[dict[str, Any], Path, str]) -> None:
    result, _, _ = quick
    assert [r["activation"] for r in result["activations"]] == list(ACTIVATIONS)
    assert {r["head"] for r in result["activations"]} == {"sigmoid"}
    assert [r["head"] for r in result["heads"]] == list(HEADS)
    assert {r["activation"] for r in result["heads"]} == {"relu"}
    for row in result["activations"] + result["heads"]:
        assert row["n_seeds"] == len(QUICK.seeds)
        assert row["is_probability"] == is_probability(row["head"])
        for name in ("dice_calibrated", "dice_at_0.5", "auc", "dead_fraction", "seconds_per_epoch"):
            assert 0 <= row[name]["mean"] <= (1 if name != "seconds_per_epoch" else math.inf)
        assert 0 <= row["tied_at_min_fraction"]["mean"] <= 1
        # Brier and ECE exist exactly where the head's output is a probability.
        assert (row["brier"]["mean"] is not None) == row["is_probability"]
        assert (row["ece"]["mean"] is not None) == row["is_probability"]


def test_relu_sigmoid_is_trained_once(quick: tuple[dict[str, Any], Path, str]) -> None:
    result, _, _ = quick
    runs = result["runs"]
    assert len(runs) == len(ACTIVATIONS) + len(HEADS) - 1 == len(combinations())
    assert sum(r["activation"] == "relu" and r["head"] == "sigmoid" for r in runs) == 1
    shared = result["activations"][ACTIVATIONS.index("relu")]
    assert shared == result["heads"][HEADS.index("sigmoid")]


def test_every_run_records_each_epoch_and_layer(quick: tuple[dict[str, Any], Path, str]) -> None:
    result, _, _ = quick
    for run in result["runs"]:
        assert [e["epoch"] for e in run["epochs"]] == list(range(1, QUICK.epochs + 1))
        for epoch in run["epochs"]:
            assert epoch["seconds"] > 0
            assert epoch["layers"], "no hidden layer was watched"
            for layer in epoch["layers"]:
                assert 0 <= layer["dead_fraction"] <= 1 and layer["std"] >= 0
    relu_head = next(r for r in result["runs"] if r["head"] == "relu")
    assert relu_head["clipped_to_unit"]["ece"] >= 0


def test_json_is_finite_and_the_same_in_the_file(quick: tuple[dict[str, Any], Path, str]) -> None:
    result, _, text = quick
    bad = [(where, n) for where, n in numbers(result) if not math.isfinite(n)]
    assert not bad
    assert json.loads(text) == result


def test_figures_and_tables_come_from_the_json_alone(
    quick: tuple[dict[str, Any], Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, folder, text = quick
    for name in ("activations-dead-units.png", "activations-reliability.png"):
        assert (folder / name).read_bytes().startswith(PNG_SIGNATURE)
    saved = tmp_path / "study.json"
    saved.write_text(text)
    capsys.readouterr()
    main(["--from", str(saved), "--tables", "--plots", str(tmp_path / "figures")])
    printed = capsys.readouterr().out
    assert not printed.lstrip().startswith("{"), "--from must not print the JSON again"
    for name in (*ACTIVATIONS, *HEADS):
        assert f"| {name} |" in printed
    assert (tmp_path / "figures" / "activations-reliability.png").is_file()


def test_the_docs_tables_are_the_saved_studys() -> None:
    """docs/activations.md quotes the tables of docs/activations.json, not hand-copied numbers."""
    docs = Path(__file__).resolve().parents[2] / "docs"
    study = json.loads((docs / "activations.json").read_text())
    page = (docs / "activations.md").read_text()
    assert activation_table(study) in page
    assert head_table(study) in page
    assert study["budget"]["seeds"] == [0, 1, 2] and not study["quick"]
