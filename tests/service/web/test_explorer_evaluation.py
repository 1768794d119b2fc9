"""Scoring a threshold on the user's own image against its ground-truth mask, in the browser."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from model.data.synth import generate_pair, pair_rng
from tests.service.web.browser import Visit
from tests.service.web.explorer_page import (
    MODEL,
    api_threshold,
    drawn_mask,
    pixel,
    server_mask,
    set_exact_threshold,
    upload_image,
)

FP_ORANGE = [230, 159, 0]
FN_BLUE = [86, 180, 233]


def image_and_truth(folder: Path, size: int = 192) -> tuple[Path, Path, np.ndarray]:
    """A synthetic cell image and its true mask (0/255 PNG), and the mask as booleans."""
    image, mask = generate_pair(pair_rng(31, 0), size)
    image_path, truth_path = folder / "cells.png", folder / "cells-truth.png"
    Image.fromarray(image).save(image_path)
    truth = mask > 0
    Image.fromarray(truth.astype(np.uint8) * 255).save(truth_path)
    return image_path, truth_path, truth


def scores(predicted: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    tp = float(np.sum(predicted & truth))
    fp = float(np.sum(predicted & ~truth))
    fn = float(np.sum(~predicted & truth))
    return {
        "dice": 2 * tp / (2 * tp + fp + fn),
        "iou": tp / (tp + fp + fn),
        "precision": tp / (tp + fp),
        "recall": tp / (tp + fn),
    }


def shown(visit: Visit, name: str) -> str:
    return visit.page.text_content(f"#eval-{name}") or ""


def test_the_pages_dice_at_a_slider_value_is_the_dice_of_the_services_mask(
    visit: Visit, tmp_path: Path
) -> None:
    page = visit.page
    image, truth_path, truth = image_and_truth(tmp_path)
    visit.open_explorer(MODEL)
    upload_image(visit, image)
    assert page.is_hidden("#evaluation")
    page.set_input_files("#truth-input", str(truth_path))
    page.locator("#evaluation").wait_for(state="visible")
    asked = list(visit.requests)

    for threshold in (0.2, 0.5, 0.8):
        set_exact_threshold(visit, threshold)
        served = server_mask(visit.base, image, threshold)
        # Reading the canvas waits for the frame that redraws the mask and the scores together.
        drawn_mask(visit)
        assert f"({int(served.sum())} of {served.size} pixels)" in (
            page.text_content("#foreground-fraction") or ""
        )
        expected = scores(served, truth)
        for name in ("dice", "iou", "precision", "recall"):
            assert shown(visit, name) == f"{expected[name]:.3f}", (threshold, name)
        fraction = f"{100 * served.mean():.2f} %"
        assert shown(visit, "foreground") == fraction

    # Errors are coloured: a false positive orange, a false negative blue.
    predicted = server_mask(visit.base, image, 0.5)
    set_exact_threshold(visit, 0.5)
    drawn_mask(visit)
    for wrong, colour in ((predicted & ~truth, FP_ORANGE), (~predicted & truth, FN_BLUE)):
        if wrong.any():
            y, x = np.argwhere(wrong)[0]
            assert pixel(visit, "mask-canvas", int(x), int(y))[:3] == colour

    # The active threshold's column, and the side-by-side view at it.
    active = api_threshold(visit.base)["value"]
    expected = scores(server_mask(visit.base, image, active), truth)
    assert shown(visit, "active-dice") == f"{expected['dice']:.3f}"
    page.check("#show-active")
    page.locator("#active-figure").wait_for(state="visible")
    moved = [r for r in visit.requests[len(asked) :] if "/mask" not in r]
    assert moved == [], "scoring as the slider moves must not ask the service"


def test_a_ground_truth_of_another_size_is_refused_in_words(visit: Visit, tmp_path: Path) -> None:
    page = visit.page
    image, _, _ = image_and_truth(tmp_path)
    other = tmp_path / "small-truth.png"
    Image.fromarray(np.zeros((32, 40), np.uint8)).save(other)
    visit.open_explorer(MODEL)
    upload_image(visit, image)
    page.set_input_files("#truth-input", str(other))
    page.locator("#problem").wait_for(state="visible")
    assert "40 \N{MULTIPLICATION SIGN} 32 px" in (page.text_content("#problem-detail") or "")
    assert page.is_hidden("#evaluation")
