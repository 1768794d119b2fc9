"""The explorer's state model: what belongs to one model or one image never outlives it."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from tests.service.web.browser import API_KEY, Visit, wait_until
from tests.service.web.explorer_page import (
    MODEL,
    calibration_zip,
    cells_png,
    drawn_mask,
    server_mask,
    upload_image,
)

OTHER = "unet-relu"


def calibrate_by_api(base: str, tmp_path: Path) -> str:
    """Calibrate and activate MODEL through the API; the id once the job has succeeded."""
    with calibration_zip(tmp_path).open("rb") as dataset:
        started = httpx.post(
            f"{base}/v1/models/{MODEL}/calibrations",
            files={"dataset": ("calibration.zip", dataset, "application/zip")},
            data={"strategy": "f1", "activate": "true"},
            headers={"Authorization": f"Bearer {API_KEY}"},
            timeout=60,
        )
    assert started.status_code == 202, started.text
    location = f"{base}{started.headers['Location']}"
    deadline = time.monotonic() + 120
    while (job := httpx.get(location, timeout=10).json())["status"] not in {"succeeded", "failed"}:
        assert time.monotonic() < deadline, job
        time.sleep(0.2)  # polling the job's own status, not waiting for a guess
    assert job["status"] == "succeeded", job
    return str(job["id"])


def visible_points(visit: Visit) -> int:
    return int(visit.page.locator("#roc circle.point").count())


def test_the_roc_panel_is_hidden_when_empty_and_never_shows_another_models_curve(
    visit: Visit, tmp_path: Path
) -> None:
    page = visit.page
    visit.open_explorer(MODEL)
    # Nothing to draw: no empty 400 px box under "No calibration yet".
    assert page.is_hidden("#roc")
    assert page.locator("#roc").bounding_box() is None

    calibrate_by_api(visit.base, tmp_path)
    visit.open_explorer(MODEL)
    wait_until(page, "document.getElementById('roc-caption').textContent.startsWith('Active')")
    assert page.is_visible("#roc") and visible_points(visit) > 0

    page.select_option("#model-select", OTHER)
    wait_until(page, f"document.getElementById('model-head').dataset.model === {OTHER!r}")
    wait_until(page, "document.getElementById('roc-caption').textContent.startsWith('No')")
    assert page.is_hidden("#roc")
    # Nothing of sigmoid's curve is left to see or to focus (its points moved relu's slider).
    assert visible_points(visit) == 0
    assert page.locator("#operating-points tbody tr").count() == 0


def test_a_failed_upload_leaves_nothing_of_the_image_before(visit: Visit, tmp_path: Path) -> None:
    page = visit.page
    visit.expect_status(422)
    visit.open_explorer(MODEL)
    upload_image(visit, cells_png(tmp_path, 96))
    assert page.is_enabled("#download-mask")

    notes = tmp_path / "notes.txt"
    notes.write_text("these are not pixels\n")
    page.set_input_files("#image-input", str(notes))
    page.locator("#problem").wait_for(state="visible")
    assert page.is_hidden("#view")
    assert page.is_disabled("#download-mask") and page.is_disabled("#download-probabilities")
    assert page.text_content("#foreground-fraction") == "\N{EN DASH}"


def probabilities(base: str, model: str, path: Path) -> bytes:
    answer = httpx.post(
        f"{base}/v1/models/{model}/probabilities",
        files={"image": (path.name, path.read_bytes(), "image/png")},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    return answer.content


def test_a_late_answer_for_the_model_before_never_draws_into_the_new_one(
    visit: Visit, tmp_path: Path
) -> None:
    page = visit.page
    image = cells_png(tmp_path, 128)
    sigmoid_map = probabilities(visit.base, MODEL, image)
    held: list[Any] = []
    page.route(f"**/v1/models/{MODEL}/probabilities*", lambda route: held.append(route))
    visit.open_explorer(MODEL)
    with page.expect_request(f"**/v1/models/{MODEL}/probabilities*"):
        page.set_input_files("#image-input", str(image))

    # Switching model gives up the request still in flight for the one before.
    with page.expect_event(
        "requestfailed", lambda request: f"/models/{MODEL}/probabilities" in request.url
    ):
        page.select_option("#model-select", OTHER)
    wait_until(page, f"document.getElementById('image-status').textContent.includes({OTHER!r})")
    wait_until(
        page,
        "document.getElementById('foreground-fraction').textContent.includes('px')"
        " || document.getElementById('foreground-fraction').textContent.includes('pixels')",
    )
    page.unroute(f"**/v1/models/{MODEL}/probabilities*")
    # Sigmoid's answer arrives late; the page must not use it.
    with contextlib.suppress(Exception):  # the page gave the request up: nothing to answer
        held[0].fulfill(status=200, body=sigmoid_map, content_type="application/octet-stream")
    wait_until(page, "document.getElementById('image-panel').getAttribute('aria-busy') === 'false'")
    active = httpx.get(f"{visit.base}/v1/models/{OTHER}/threshold", timeout=10).json()["value"]
    relu = server_mask(visit.base, image, active, OTHER)
    assert np.array_equal(drawn_mask(visit), relu)
    assert f"({int(relu.sum())} of {128 * 128} pixels)" in (
        page.text_content("#foreground-fraction") or ""
    )
