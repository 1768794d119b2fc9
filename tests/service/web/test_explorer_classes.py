"""The explorer with a multi-class model: a class picker, a cut per class, a colour per class."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model.calibration.decision import decide
from tests.service.web.browser import API_KEY, Visit, wait_until
from tests.service.web.explorer_page import (
    MODEL,
    cells_png,
    confirm,
    current_threshold,
    drawn_labels,
    give_key,
    server_class_mask,
    server_maps,
    set_exact_threshold,
    upload_image,
)

MULTI = "unet-multiclass"
CLASSES = ["nucleus", "debris"]


def choose_class(visit: Visit, name: str) -> None:
    """Put class `name` on the slider and wait until the page shows its active threshold."""
    visit.page.select_option("#class-select", name)
    wait_until(visit.page, f"document.getElementById('threshold-panel').dataset.class === {name!r}")


def test_each_class_has_its_slider_and_colour_and_the_page_cuts_as_the_service(
    visit: Visit, tmp_path: Path
) -> None:
    page = visit.page
    visit.open_explorer(MULTI)
    assert page.is_visible("#class-field") and page.is_visible("#class-legend")
    options = page.eval_on_selector_all("#class-select option", "els => els.map(e => e.value)")
    assert options == CLASSES
    image = cells_png(tmp_path, 96)
    upload_image(visit, image)
    info = page.evaluate(f"fetch('/v1/models/{MULTI}').then(r => r.json())")
    active = {name: info["class_thresholds"][name]["value"] for name in CLASSES}

    # The slider, moved by keyboard, cuts debris; the readout is debris's own active threshold.
    choose_class(visit, "debris")
    assert float(page.text_content("#model-threshold") or "nan") == pytest.approx(
        active["debris"], abs=1e-4
    )
    page.focus("#threshold-slider")
    for _ in range(40):
        page.keyboard.press("ArrowRight")
    cut = current_threshold(visit)
    assert cut > active["debris"]
    # Both classes at one cut: the page's class masks are the service's `?class=&threshold=`.
    choose_class(visit, "nucleus")
    set_exact_threshold(visit, cut)
    labels = drawn_labels(visit)
    for k, name in enumerate(CLASSES, start=1):
        wanted = server_class_mask(visit.base, image, MULTI, name, cut)
        assert wanted.any()
        np.testing.assert_array_equal(labels == k, wanted)
    # A cut per class: the page applies the service's rule to the (K, H, W) maps.
    set_exact_threshold(visit, 0.7)
    maps = server_maps(visit.base, image, MULTI)
    np.testing.assert_array_equal(drawn_labels(visit), decide(maps, [0.7, cut]))
    choose_class(visit, "debris")
    assert current_threshold(visit) == cut  # each class keeps its own slider value


def test_a_confirmed_change_is_for_the_chosen_class_only(visit: Visit) -> None:
    page = visit.page
    visit.expect_status(401)
    visit.open_explorer(MULTI)
    choose_class(visit, "debris")
    set_exact_threshold(visit, 0.35)
    page.click("#set-manual")
    confirm(visit)
    give_key(visit, API_KEY)
    wait_until(page, "document.getElementById('model-source').textContent === 'manual'")
    info = page.evaluate(f"fetch('/v1/models/{MULTI}').then(r => r.json())")
    assert info["class_thresholds"]["debris"]["value"] == 0.35
    assert info["class_thresholds"]["nucleus"]["source"] == "default"
    page.click("#history-toggle")
    wait_until(page, "document.querySelectorAll('#history-list li').length === 1")
    assert "0.35" in (page.text_content("#history-list") or "")
    # The other class has no change, and its readout is its own.
    choose_class(visit, "nucleus")
    wait_until(page, "document.getElementById('history-empty').hidden === false")
    assert page.text_content("#model-source") == "default"
    # A binary model has no class picker.
    visit.open_explorer(MODEL)
    assert page.is_hidden("#class-field") and page.is_hidden("#class-legend")


def test_activating_a_multi_class_calibration_confirms_every_classs_threshold(
    visit: Visit, tmp_path: Path
) -> None:
    from model.data.synth import generate_labelled, pair_rng
    from tests.helpers import make_zip, png

    page = visit.page
    visit.expect_status(401)
    files = {}
    for i in range(4):
        image, labels = generate_labelled(pair_rng(9301, i), 64)
        files[f"images/{i:03d}.png"] = png(image)
        files[f"masks/{i:03d}.png"] = png(labels)
    dataset = tmp_path / "classes.zip"
    dataset.write_bytes(make_zip(files))
    visit.open_explorer(MULTI)
    page.set_input_files("#dataset-input", str(dataset))
    page.uncheck("#activate-on-success")
    page.click("#start-calibration")
    give_key(visit, API_KEY)
    page.locator("#calibration-report").wait_for(state="visible", timeout=120_000)
    calibration_id = page.evaluate(
        "document.getElementById('calibration-status').textContent.split(' ')[1].replace(':', '')"
    )
    report = page.evaluate(
        f"fetch('/v1/models/{MULTI}/calibrations/{calibration_id}').then(r => r.json())"
    )["report"]
    thresholds = report["summary"]["thresholds"]
    page.click("#activate-calibration")
    page.locator("#confirm-dialog").wait_for(state="visible")
    # Every class's new threshold, named, not a single "-".
    wanted = ", ".join(f"{name} {thresholds[name]:.4g}" for name in CLASSES)
    assert page.text_content("#confirm-new") == f"{wanted} (calibration {calibration_id})"
    page.click("#confirm-ok")
    wait_until(
        page, "document.getElementById('model-source').textContent.startsWith('calibration')"
    )
    info = page.evaluate(f"fetch('/v1/models/{MULTI}').then(r => r.json())")
    for name in CLASSES:
        assert info["class_thresholds"][name]["calibration_id"] == calibration_id
