"""The explorer shows an active calibration's guarantee and recalibration beside the threshold."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.helpers import dataset_files, make_zip
from tests.service.web.browser import API_KEY, Visit, wait_until
from tests.service.web.explorer_page import MODEL, calibrate, confirm, give_key


def facts(visit: Visit, list_id: str) -> dict[str, str]:
    """A definition list of the page as {term: value}."""
    return visit.page.evaluate(
        f"""() => {{
          const items = [...document.querySelectorAll('#{list_id} dt')];
          return Object.fromEntries(items.map((dt) => [dt.textContent,
            dt.nextElementSibling.textContent]));
        }}"""
    )


def test_the_guarantee_and_the_recalibration_are_shown_where_the_threshold_is(
    visit: Visit,
) -> None:
    page = visit.page
    visit.open_explorer(MODEL)
    assert page.is_hidden("#guarantee") and page.is_hidden("#recalibration")
    job = calibrate(visit.base, 8, strategy="fnr_control", target="0.3", recalibrate="platt")
    report = job["report"]
    guarantee, recalibration = report["guarantee"], report["recalibration"]
    visit.open_explorer(MODEL)
    page.locator("#guarantee").wait_for(state="visible")
    assert page.text_content("#guarantee-statement") == guarantee["statement"]
    shown = facts(visit, "guarantee-facts")
    assert float(shown["alpha (the bound on the mean risk)"]) == pytest.approx(0.3)
    assert shown["delta (the chance it fails)"].startswith("\N{EN DASH}")  # fnr_control has none
    assert shown["Calibration images"] == str(guarantee["n_images"])
    assert float(shown["Risk on the calibration images"]) == pytest.approx(
        guarantee["calibration_risk"], rel=1e-3, abs=1e-4
    )
    median, p90 = (float(v) for v in shown["Per image: median, 90th percentile"].split(", "))
    assert median == pytest.approx(guarantee["per_image"]["median"], rel=1e-3, abs=1e-4)
    assert p90 == pytest.approx(guarantee["per_image"]["p90"], rel=1e-3, abs=1e-4)
    assert page.is_hidden("#guarantee-withdrawn")  # no drift alert: the guarantee holds
    page.locator("#recalibration").wait_for(state="visible")
    shown = facts(visit, "recalibration-facts")
    assert shown["Method"] == "platt"
    before, after = (float(v) for v in shown["ECE (held-out pixels)"].split(" → "))
    assert before == pytest.approx(recalibration["ece_before"], rel=1e-3, abs=1e-4)
    assert after == pytest.approx(recalibration["ece_after"], rel=1e-3, abs=1e-4)
    assert "recalibrated scale" in (page.text_content("#recalibration") or "")
    # A manual threshold is no calibration's: neither block stays.
    threshold = httpx.put(
        f"{visit.base}/v1/models/{MODEL}/threshold",
        json={"value": 0.5},
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=10,
    )
    assert threshold.status_code == 200, threshold.text
    visit.open_explorer(MODEL)
    wait_until(page, "document.getElementById('model-source').textContent === 'manual'")
    page.locator("#roc").wait_for(state="visible")
    assert page.is_hidden("#guarantee") and page.is_hidden("#recalibration")


def test_a_guaranteed_calibration_with_recalibration_started_from_the_page(
    visit: Visit, tmp_path: Path
) -> None:
    page = visit.page
    visit.expect_status(401)
    visit.open_explorer(MODEL)
    zipped = tmp_path / "calibration.zip"
    zipped.write_bytes(make_zip(dataset_files(8, 64)))
    page.set_input_files("#dataset-input", str(zipped))
    page.select_option("#strategy", "fnr_control")
    assert page.is_visible("#target-field") and page.is_hidden("#delta-field")
    page.fill("#target", "0.3")
    page.select_option("#recalibrate", "isotonic")
    page.check("#activate-on-success")
    page.click("#start-calibration")
    confirm(visit)
    give_key(visit, API_KEY)
    page.locator("#guarantee").wait_for(state="visible", timeout=120_000)
    job = httpx.get(f"{visit.base}/v1/models/{MODEL}/calibrations", timeout=10).json()
    newest = job["calibrations"][0]
    assert newest["active"] and newest["status"] == "succeeded"
    assert facts(visit, "recalibration-facts")["Method"] == "isotonic"
