"""Objects in the explorer: the service's count, the outlines over the image, three downloads."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.service.web.browser import Visit, wait_until
from tests.service.web.explorer_page import (
    MODEL,
    calibrate,
    cells_png,
    current_threshold,
    set_exact_threshold,
    upload_image,
)


def instances(base: str, path: Path, model: str = MODEL, **params: object) -> httpx.Response:
    """The service's /instances answer for `path`."""
    response = httpx.post(
        f"{base}/v1/models/{model}/instances",
        params=params,
        files={"image": (path.name, path.read_bytes(), "image/png")},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return response


def instances_of(base: str, path: Path, model: str, name: str) -> int:
    """How many objects of class `name` the service finds in `path` at the cuts in force."""
    return int(instances(base, path, model, format="json", **{"class": name}).json()["count"])


def count_objects(visit: Visit) -> int:
    """Click "Count objects" and return the count the page shows."""
    visit.page.click("#count-objects")
    wait_until(
        visit.page,
        "document.getElementById('object-count').dataset.count !== undefined",
        timeout_ms=60_000,
    )
    return int(visit.page.get_attribute("#object-count", "data-count") or "-1")


def test_the_count_is_the_services_and_each_object_is_outlined(
    visit: Visit, tmp_path: Path
) -> None:
    page = visit.page
    visit.open_explorer(MODEL)
    assert page.is_hidden("#objects")
    image = cells_png(tmp_path, 128)
    upload_image(visit, image)
    set_exact_threshold(visit, 0.45)
    shown = count_objects(visit)
    answer = instances(visit.base, image, format="geojson", threshold=0.45)
    assert shown == int(answer.headers["X-Object-Count"]) > 0
    assert f"{shown} object(s) at threshold 0.45." == page.text_content("#object-count")
    # One outline per object, in the image's pixel coordinates, over the image.
    assert page.locator("#outlines path").count() == shown
    assert page.get_attribute("#outlines", "viewBox") == "0 0 128 128"
    first = answer.json()["features"][0]["geometry"]["coordinates"][0][0]
    assert page.get_attribute("#outlines path", "d").startswith(f"M{first[0]},{first[1]}")
    # The three files, named like the other downloads.
    for button, name in (
        ("#download-geojson", "cells-128-unet-sigmoid-t0.45-objects.geojson"),
        ("#download-csv", "cells-128-unet-sigmoid-t0.45-objects.csv"),
        ("#download-labels", "cells-128-unet-sigmoid-t0.45-labels.png"),
    ):
        with page.expect_download() as download:
            page.click(button)
        assert download.value.suggested_filename == name
    # Another threshold: the outlines of the old one go.
    set_exact_threshold(visit, 0.6)
    assert page.is_hidden("#outlines") and page.is_disabled("#download-csv")


def test_at_a_calibrated_threshold_the_count_comes_with_its_range(
    visit: Visit, tmp_path: Path
) -> None:
    page = visit.page
    calibrate(visit.base, 4, strategy="f1")
    visit.open_explorer(MODEL)
    image = cells_png(tmp_path, 128)
    upload_image(visit, image)
    table = instances(visit.base, image, format="json").json()
    assert table["count_range"] is not None
    assert current_threshold(visit) == table["threshold"]
    assert count_objects(visit) == table["count"]
    low, high = sorted(table["count_range"]["counts"])
    shown = page.text_content("#object-count") or ""
    assert f"; {low} \N{EN DASH} {high} over calibration" in shown


def test_a_multi_class_models_objects_are_the_chosen_classs(visit: Visit, tmp_path: Path) -> None:
    page = visit.page
    multi = "unet-multiclass"
    visit.open_explorer(multi)
    image = cells_png(tmp_path, 96)
    upload_image(visit, image)
    page.select_option("#class-select", "debris")
    wait_until(page, "document.getElementById('threshold-panel').dataset.class === 'debris'")
    assert page.text_content("#count-objects") == "Count debris objects"
    # At the class's active threshold: the service's count of debris alone, at the cuts in force.
    shown = count_objects(visit)
    table = instances(visit.base, image, model=multi, format="json", **{"class": "debris"}).json()
    assert shown == table["count"] == len(table["objects"]) > 0
    assert {row["class"] for row in table["objects"]} == {"debris"}
    assert page.locator("#outlines path").count() == shown
    assert (page.text_content("#object-count") or "").startswith(f"{shown} debris object(s) at")
    with page.expect_download() as download:
        page.click("#download-csv")
    assert download.value.suggested_filename.endswith("-debris-objects.csv")
    # The other class: its own count, and the panel says so.
    page.select_option("#class-select", "nucleus")
    wait_until(page, "document.getElementById('threshold-panel').dataset.class === 'nucleus'")
    assert page.text_content("#count-objects") == "Count nucleus objects"
    assert page.is_hidden("#outlines")
    nuclei = instances_of(visit.base, image, multi, "nucleus")
    assert count_objects(visit) == nuclei
