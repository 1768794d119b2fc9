"""The explorer's explanations, its narrow layout, and axe-core on its main states."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from model.data.synth import generate_pair, pair_rng
from tests.service.web.browser import API_KEY, NARROW, WIDE, Visit, wait_until
from tests.service.web.explorer_page import (
    MODEL,
    calibrate,
    calibration_zip,
    confirm,
    set_exact_threshold,
    upload_image,
)

# Installed by `make axe` (npm, pinned); absent, the axe test skips and says how to get it.
AXE = Path(__file__).parents[3] / ".cache" / "axe" / "node_modules" / "axe-core" / "axe.min.js"
RUN_AXE = """async () => {
  const result = await axe.run(document, { resultTypes: ["violations"] });
  return result.violations
    .filter((v) => v.impact === "serious" || v.impact === "critical")
    .map((v) => `${v.id} (${v.impact}): ${v.nodes.map((n) => n.target.join(" ")).join(", ")}`);
}"""


@pytest.fixture
def axe_source() -> Iterator[str]:
    if not AXE.is_file():
        pytest.skip(f"axe-core is not installed at {AXE}: run `make axe` (npm)")
    yield AXE.read_text()


def violations(page: Any, source: str) -> dict[str, list[str]]:
    """Serious and critical axe-core violations at 1280 and at 390 px."""
    # Through the DevTools protocol: the service's Content-Security-Policy forbids inline scripts.
    page.evaluate(f"() => {{ if (!window.axe) {{ {source}\n }} }}")
    found = {}
    for name, size in (("1280", WIDE), ("390", NARROW)):
        page.set_viewport_size(size)
        found[name] = page.evaluate(RUN_AXE)
    page.set_viewport_size(WIDE)
    return found


def image_and_truth(folder: Path) -> tuple[Path, Path]:
    image, mask = generate_pair(pair_rng(5, 0), 160)
    Image.fromarray(image).save(folder / "cells.png")
    Image.fromarray((mask > 0).astype(np.uint8) * 255).save(folder / "truth.png")
    return folder / "cells.png", folder / "truth.png"


def test_no_serious_or_critical_axe_violation_in_the_main_states(
    visit: Visit, tmp_path: Path, axe_source: str, screenshots: Path | None
) -> None:
    page = visit.page
    visit.expect_status(401)
    visit.open_explorer(MODEL)
    states = {"empty": violations(page, axe_source)}

    image, truth = image_and_truth(tmp_path)
    upload_image(visit, image)
    states["image loaded"] = violations(page, axe_source)

    page.set_input_files("#truth-input", str(truth))
    page.locator("#evaluation").wait_for(state="visible")
    set_exact_threshold(visit, 0.3)
    page.check("#show-active")
    states["evaluation shown"] = violations(page, axe_source)
    if screenshots:
        screenshots.mkdir(parents=True, exist_ok=True)
        page.locator("#image-panel").screenshot(path=str(screenshots / "explorer-evaluation.png"))

    page.set_input_files("#dataset-input", str(calibration_zip(tmp_path)))
    page.click("#start-calibration")
    page.locator("#key-dialog").wait_for(state="visible")
    page.fill("#api-key", API_KEY)
    page.click("#key-ok")
    page.locator("#calibration-report").wait_for(state="visible", timeout=120_000)
    page.locator("#roc").wait_for(state="visible")
    states["calibration report"] = violations(page, axe_source)

    page.click("#activate-calibration")
    confirm(visit)
    wait_until(page, "document.getElementById('model-source').textContent.startsWith('calib')")
    page.click("#history-toggle")
    wait_until(page, "document.querySelectorAll('#history-list li').length >= 1")
    page.fill("#actor", "ada")
    set_exact_threshold(visit, 0.45)
    page.click("#set-manual")
    confirm(visit)
    wait_until(page, "document.querySelectorAll('#history-list li').length >= 2")
    states["history open"] = violations(page, axe_source)
    if screenshots:
        page.locator("#history-panel").screenshot(path=str(screenshots / "explorer-history.png"))
    assert {state: found for state, found in states.items() if any(found.values())} == {}


def test_terms_explained_slider_ends_rounded_value_and_names_of_downloads(
    visit: Visit, tmp_path: Path
) -> None:
    page = visit.page
    visit.open_explorer(MODEL)
    image, _ = image_and_truth(tmp_path)
    upload_image(visit, image)
    # Every "?" beside a term leads to one sentence about it.
    for term in ("tpr", "fpr", "f1", "auc", "psi", "no_reference", "dice", "iou"):
        assert page.locator(f"#term-{term}").count() == 1
        assert (page.text_content(f"#term-{term} + dd") or "").count(". ") <= 1
    assert page.locator("a.help-link[href='#term-tpr']").count() >= 1
    # The slider's ends; the value rounded, and in full on demand.
    assert page.text_content("#slider-low") == "0" and page.text_content("#slider-high") == "1"
    set_exact_threshold(visit, 0.47906494140625)
    assert page.text_content("#threshold-value") == "0.4791"
    assert page.text_content("#threshold-exact") == "0.47906494140625"
    with page.expect_download() as download:
        page.click("#download-mask")
    assert download.value.suggested_filename == "cells-unet-sigmoid-t0.4791-mask.png"
    with page.expect_download() as download:
        page.click("#download-probabilities")
    assert download.value.suggested_filename == "cells-unet-sigmoid-probabilities.npy"


def test_tables_fit_or_visibly_scroll_at_390_px(visit: Visit, tmp_path: Path) -> None:
    page = visit.page
    visit.expect_status(401)
    page.set_viewport_size(NARROW)
    visit.open_explorer(MODEL)
    page.set_input_files("#dataset-input", str(calibration_zip(tmp_path)))
    page.click("#start-calibration")
    page.locator("#key-dialog").wait_for(state="visible")
    page.fill("#api-key", API_KEY)
    page.click("#key-ok")
    page.locator("#operating-points").wait_for(state="visible", timeout=120_000)
    # The whole table, its "Use" buttons included, lies inside its box: nothing cut off.
    sizes = page.evaluate(
        "(() => { const box = document.getElementById('operating-points-scroll');"
        " return [box.scrollWidth, box.clientWidth]; })()"
    )
    assert sizes[0] <= sizes[1], sizes
    assert page.evaluate("document.documentElement.scrollWidth") <= NARROW["width"]
    # The slider's marker stays inside the zoomed axes, whatever the threshold.
    set_exact_threshold(visit, 0.0001)
    cut = page.locator("#roc-cut")
    frame = page.locator("#roc rect.frame")
    x, width = float(frame.get_attribute("x") or 0), float(frame.get_attribute("width") or 0)
    assert x <= float(cut.get_attribute("cx") or -1) <= x + width
    assert page.text_content("#roc-zoom") == "Show the whole curve"


def test_no_serious_or_critical_axe_violation_with_classes_a_guarantee_and_outlines(
    visit: Visit, tmp_path: Path, axe_source: str, screenshots: Path | None
) -> None:
    page = visit.page
    image, _ = image_and_truth(tmp_path)
    visit.open_explorer("unet-multiclass")
    upload_image(visit, image)
    page.select_option("#class-select", "debris")
    wait_until(page, "document.getElementById('threshold-panel').dataset.class === 'debris'")
    states = {"class picker": violations(page, axe_source)}
    if screenshots:
        screenshots.mkdir(parents=True, exist_ok=True)
        page.set_viewport_size({"width": 1280, "height": 1300})
        shot = {"x": 0, "y": 60, "width": 1280, "height": 1180}
        page.screenshot(path=str(screenshots / "explorer-classes.png"), clip=shot)
        page.set_viewport_size(WIDE)

    calibrate(visit.base, 8, strategy="fnr_control", target="0.3", recalibrate="platt")
    visit.open_explorer(MODEL)
    page.locator("#recalibration").wait_for(state="visible")
    page.locator("#guarantee").wait_for(state="visible")
    states["guarantee"] = violations(page, axe_source)
    if screenshots:
        shot = str(screenshots / "explorer-guarantee.png")
        page.locator("#threshold-panel").screenshot(path=shot)

    upload_image(visit, image)
    page.click("#count-objects")
    page.locator("#outlines path").first.wait_for(state="attached", timeout=60_000)
    states["outlines"] = violations(page, axe_source)
    if screenshots:
        page.locator("#image-panel").screenshot(path=str(screenshots / "explorer-objects.png"))
    assert {state: found for state, found in states.items() if any(found.values())} == {}
