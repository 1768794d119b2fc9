"""The threshold explorer at `/`, driven in a real chromium against a real service."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import numpy as np
import tifffile
from PIL import Image

from model.data.synth import generate_pair, pair_rng
from tests.service.web.browser import API_KEY, NARROW, WIDE, Visit, wait_until
from tests.service.web.explorer_page import (
    MODEL,
    api_threshold,
    calibration_zip,
    cells_png,
    confirm,
    current_threshold,
    drawn_mask,
    drop_file,
    pixel,
    server_mask,
    set_exact_threshold,
    upload_image,
)


def test_the_slider_rethresholds_a_1024_px_image_in_the_browser_without_a_request(
    visit: Visit, tmp_path: Path
) -> None:
    image = cells_png(tmp_path, 1024)
    visit.open_explorer(MODEL)
    upload_image(visit, image)
    asked = list(visit.requests)

    # Each step up the slider keeps fewer pixels, and somewhere in between strictly fewer.
    counts = []
    for threshold in (0.05, 0.3, 0.5, 0.7, 0.95):
        set_exact_threshold(visit, threshold)
        counts.append(int(drawn_mask(visit).sum()))
    assert counts == sorted(counts, reverse=True) and counts[0] > counts[-1] > 0, counts

    # By keyboard: End is the top of the range (nothing left), Home the bottom (everything).
    slider = visit.page.locator("#threshold-slider")
    slider.focus()
    visit.page.keyboard.press("Home")
    assert drawn_mask(visit).all()
    for _ in range(200):
        visit.page.keyboard.press("ArrowRight")
    after_steps = int(drawn_mask(visit).sum())
    assert counts[0] >= after_steps > 0 and current_threshold(visit) > 0.1
    shown = visit.page.text_content("#foreground-fraction") or ""
    assert f"({after_steps} of {1024 * 1024} pixels)" in shown

    assert visit.requests == asked, "moving the slider must not ask the server"

    # The browser's cut of the full-precision map is the service's own, pixel for pixel.
    set_exact_threshold(visit, 0.5)
    assert np.array_equal(drawn_mask(visit), server_mask(visit.base, image, 0.5))


def test_an_overlay_over_the_image_with_opacity_and_the_probability_map(
    visit: Visit, tmp_path: Path
) -> None:
    image = cells_png(tmp_path, 200)
    visit.open_explorer(MODEL)
    drop_file(visit, image)
    page = visit.page
    size = page.evaluate(
        "['image-canvas', 'mask-canvas'].map((id) => {"
        " const c = document.getElementById(id); return [c.width, c.height]; })"
    )
    assert size == [[200, 200], [200, 200]]
    # The background is the image itself, grey as it was uploaded.
    grey = np.asarray(Image.open(image))
    assert pixel(visit, "image-canvas", 120, 80)[:3] == [int(grey[80, 120])] * 3
    page.fill("#opacity", "0.8")
    assert page.evaluate("document.getElementById('mask-canvas').style.opacity") == "0.8"

    # On demand, the probability map instead, its range stretched to black..white.
    answer = httpx.post(
        f"{visit.base}/v1/models/{MODEL}/probabilities",
        files={"image": (image.name, image.read_bytes(), "image/png")},
        timeout=60,
    )
    probabilities = np.load(io.BytesIO(answer.content))
    low, high = float(probabilities.min()), float(probabilities.max())
    page.check("#show-probabilities")
    for x, y in ((120, 80), (10, 190)):
        expected = round((float(probabilities[y, x]) - low) * 255 / (high - low))
        assert abs(pixel(visit, "image-canvas", x, y)[0] - expected) <= 1


def test_an_unbounded_head_slides_over_its_own_scores(visit: Visit, tmp_path: Path) -> None:
    image = cells_png(tmp_path, 160)
    answer = httpx.post(
        f"{visit.base}/v1/models/unet-relu/probabilities",
        files={"image": (image.name, image.read_bytes(), "image/png")},
        timeout=60,
    )
    scores = np.load(io.BytesIO(answer.content))
    visit.open_explorer("unet-relu")
    upload_image(visit, image)
    slider = visit.page.locator("#threshold-slider")
    # ReLU scores: the slider spans [0, the map's highest score], its ends exactly.
    assert slider.get_attribute("data-low") == "0"
    slider.focus()
    visit.page.keyboard.press("End")
    assert current_threshold(visit) == float(scores.max())
    assert np.array_equal(drawn_mask(visit), scores >= scores.max())
    assert slider.get_attribute("aria-valuetext") == f"{float(scores.max()):.4g}"
    visit.page.keyboard.press("Home")
    assert current_threshold(visit) == 0 and drawn_mask(visit).all()


def test_a_non_image_upload_shows_the_problems_title_and_detail(
    visit: Visit, tmp_path: Path
) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("these are not pixels\n")
    answer = httpx.post(
        f"{visit.base}/v1/models/{MODEL}/probabilities",
        files={"image": ("notes.txt", notes.read_bytes(), "text/plain")},
        timeout=30,
    )
    assert answer.status_code == 422
    visit.expect_status(422)
    visit.open_explorer(MODEL)
    visit.page.set_input_files("#image-input", str(notes))
    problem = visit.page.locator("#problem")
    problem.wait_for(state="visible")
    assert visit.page.text_content("#problem-title") == answer.json()["title"]
    assert visit.page.text_content("#problem-detail") == answer.json()["detail"]
    assert visit.page.is_hidden("#view")


def test_a_16_bit_tiff_the_browser_cannot_draw_shows_its_probability_map(
    visit: Visit, tmp_path: Path
) -> None:
    image = generate_pair(pair_rng(4242, 0), 128)[0].astype(np.uint16) * 257
    path = tmp_path / "cells.tif"
    tifffile.imwrite(path, image)
    visit.open_explorer(MODEL)
    upload_image(visit, path)
    assert "showing the probability map" in (visit.page.text_content("#image-status") or "")
    assert 0 < drawn_mask(visit).mean() < 1


def test_calibrate_activate_pick_a_point_and_set_a_manual_threshold(
    visit: Visit, tmp_path: Path, screenshots: Path | None
) -> None:
    page, base = visit.page, visit.base
    visit.expect_status(401)  # the first try without a key, which makes the page ask for it
    visit.open_explorer(MODEL)
    upload_image(visit, cells_png(tmp_path, 256))

    page.set_input_files("#dataset-input", str(calibration_zip(tmp_path)))
    page.select_option("#strategy", "f1")
    page.uncheck("#activate-on-success")
    page.click("#start-calibration")
    page.locator("#key-dialog").wait_for(state="visible")
    page.fill("#api-key", API_KEY)
    page.click("#key-ok")
    page.locator("#calibration-report").wait_for(state="visible", timeout=120_000)
    assert page.is_visible("#calibration-progress")
    assert "succeeded" in (page.text_content("#calibration-status") or "")
    calibration_id = page.evaluate(
        "document.getElementById('calibration-status').textContent.split(' ')[1].replace(':', '')"
    )
    calibration = httpx.get(f"{base}/v1/models/{MODEL}/calibrations/{calibration_id}").json()
    assert api_threshold(base)["source"] != "calibration"  # not activated yet: it was asked not to

    page.click("#activate-calibration")
    confirm(visit)
    wait_until(
        page,
        "document.getElementById('model-source').textContent.startsWith('calibration')"
        " && document.getElementById('roc-caption').textContent.startsWith('Active')",
    )
    active = api_threshold(base)
    assert active["source"] == "calibration" and active["calibration_id"] == calibration_id
    assert active["value"] == calibration["report"]["threshold"] == current_threshold(visit)
    wait_until(page, "document.getElementById('activate-calibration').disabled")

    # The ROC curve shows every operating point; choosing one (by keyboard) moves the slider.
    page.locator("#roc").wait_for(state="visible")
    points = page.locator("#roc circle.point")
    assert sorted(points.evaluate_all("(ps) => ps.map((p) => p.dataset.strategy)")) == sorted(
        calibration["report"]["operating_points"]
    )
    assert page.locator("#roc polyline.interval").count() == 1
    # Zoomed onto the operating points at first (a good curve crowds them into its corner).
    assert float(page.get_attribute("#roc", "data-x-max") or 1) < 1
    page.click("#roc-zoom")
    assert page.get_attribute("#roc", "data-x-max") == "1"
    assert page.text_content("#roc-zoom") == "Zoom onto the operating points"
    page.click("#roc-zoom")
    before = int(drawn_mask(visit).sum())
    page.locator("#roc circle[data-strategy='fixed_0.5']").focus()
    page.keyboard.press("Enter")
    assert current_threshold(visit) == 0.5
    assert int(drawn_mask(visit).sum()) != before or calibration["report"]["threshold"] == 0.5

    if screenshots:
        screenshots.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(screenshots / "explorer.png"), full_page=True)
        page.set_viewport_size(NARROW)
        page.screenshot(path=str(screenshots / "explorer-narrow.png"), full_page=True)
        page.set_viewport_size(WIDE)

    # Downloads: the service's mask at the chosen threshold, and the map the page already has.
    with page.expect_download() as download:
        page.click("#download-mask")
    mask = np.asarray(Image.open(download.value.path()))
    assert mask.shape == (256, 256) and set(np.unique(mask)) <= {0, 255}
    assert np.array_equal(mask == 255, drawn_mask(visit))
    with page.expect_download() as download:
        page.click("#download-probabilities")
    probabilities = np.load(download.value.path())
    assert probabilities.shape == (256, 256) and probabilities.dtype == np.float32

    page.click("#set-manual")
    confirm(visit)
    wait_until(page, "document.getElementById('model-source').textContent.startsWith('manual')")
    assert api_threshold(base) | {"updated": None} == {
        "value": 0.5,
        "source": "manual",
        "calibration_id": None,
        "updated": None,
    }


def test_labelled_controls_and_no_sideways_scrolling_at_390_px(
    visit: Visit, tmp_path: Path
) -> None:
    page = visit.page
    page.set_viewport_size(NARROW)
    visit.open_explorer(MODEL)
    upload_image(visit, cells_png(tmp_path, 512))
    unlabelled = page.evaluate(
        "Array.from(document.querySelectorAll('input, select, button'))"
        ".filter((el) => !(el.labels?.length || el.getAttribute('aria-label')"
        " || el.textContent.trim()))"
        ".map((el) => el.id || el.outerHTML)"
    )
    assert unlabelled == []
    assert page.evaluate("document.documentElement.scrollWidth") <= NARROW["width"]


def test_a_blocked_calibration_says_why_and_activates_when_forced(
    visit: Visit, tmp_path: Path
) -> None:
    page, base = visit.page, visit.base
    # The page shows the model's calibration warnings from its description; it must have them.
    assert "warnings" in httpx.get(f"{base}/v1/models/{MODEL}", timeout=10).json()
    visit.expect_status(401)  # the page asks for the key on the first 401
    visit.expect_status(409)  # the blocked activation, shown as its problem
    visit.open_explorer(MODEL)
    before = api_threshold(base)
    # Inverted masks: the ROC curve lies below chance, a warning that blocks activation.
    page.set_input_files("#dataset-input", str(calibration_zip(tmp_path, inverted=True)))
    page.uncheck("#activate-on-success")
    page.click("#start-calibration")
    page.locator("#key-dialog").wait_for(state="visible")
    page.fill("#api-key", API_KEY)
    page.click("#key-ok")
    page.locator("#calibration-report").wait_for(state="visible", timeout=120_000)
    assert "block (auc_below_chance)" in (page.text_content("#report-warnings") or "")

    page.click("#activate-calibration")
    confirm(visit)
    page.locator("#problem").wait_for(state="visible")
    assert page.text_content("#problem-title") == "Calibration blocked"
    assert "force" in (page.text_content("#problem-detail") or "")
    assert api_threshold(base) == before

    page.check("#force")
    page.click("#activate-calibration")
    confirm(visit)
    # The model may already run on a calibration (an earlier test's): wait for this one's warning.
    wait_until(
        page, "document.getElementById('model-warnings').textContent.includes('auc_below_chance')"
    )
    assert api_threshold(base)["source"] == "calibration"
    assert "block (auc_below_chance)" in (page.text_content("#model-warnings") or "")
