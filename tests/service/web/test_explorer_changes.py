"""Changing the live threshold from the explorer: confirmed first, recorded, undoable."""

from __future__ import annotations

import httpx
from playwright.sync_api import Route

from tests.service.web.browser import API_KEY, Visit, wait_until
from tests.service.web.explorer_page import (
    MODEL,
    api_threshold,
    confirm,
    current_threshold,
    give_key,
    set_exact_threshold,
)


def test_the_page_opens_on_the_sigmoid_model_and_changes_nothing_by_itself(visit: Visit) -> None:
    page = visit.page
    page.goto(f"{visit.base}/")
    page.wait_for_selector("body[data-ready='true']")
    assert page.input_value("#model-select") == MODEL
    assert not page.is_checked("#activate-on-success")
    # Nothing to change while the slider sits on the active threshold.
    assert page.is_disabled("#set-manual")


def test_a_manual_threshold_is_confirmed_recorded_and_undone_from_the_history(
    visit: Visit,
) -> None:
    page, base = visit.page, visit.base
    visit.expect_status(401)  # the first change without a key makes the page ask for it
    visit.open_explorer(MODEL)
    before = api_threshold(base)
    page.click("#history-toggle")
    page.fill("#actor", "ada")
    set_exact_threshold(visit, 0.3)

    # Cancelled: the live service is untouched.
    page.click("#set-manual")
    page.locator("#confirm-dialog").wait_for(state="visible")
    assert page.text_content("#confirm-old") == f"{before['value']:.4g} ({before['source']})"
    assert page.text_content("#confirm-new") == "0.3 (manual)"
    assert "no_reference" in (page.text_content("#confirm-what") or "")
    page.click("#confirm-cancel")
    assert api_threshold(base) == before

    page.click("#set-manual")
    page.click("#confirm-ok")
    page.locator("#key-dialog").wait_for(state="visible")
    page.fill("#api-key", API_KEY)
    page.click("#key-ok")
    wait_until(page, "document.getElementById('model-source').textContent === 'manual'")
    assert api_threshold(base)["value"] == 0.3
    # Drift watching is off now, and the page says so in words.
    assert "Drift watching is off" in (page.text_content("#drift-note") or "")
    assert page.is_visible("#drift-note")

    wait_until(page, "document.querySelectorAll('#history-list li').length >= 1")
    newest = page.locator("#history-list li").first
    assert "ada" in (newest.text_content() or "")
    assert "to 0.3 (manual)" in (newest.text_content() or "")

    # Back to the model's default, confirmed.
    page.click("#reset-default")
    assert page.text_content("#confirm-new") == f"{before['value']:.4g} (default)"
    page.click("#confirm-ok")
    wait_until(page, "document.getElementById('model-source').textContent === 'default'")
    assert api_threshold(base)["source"] == "default"
    wait_until(page, "document.querySelectorAll('#history-list li').length >= 2")

    # Restore the manual 0.3 from the history.
    page.locator("#history-list button[aria-label='Restore 0.3 (manual)']").first.click()
    page.click("#confirm-ok")
    wait_until(page, "document.getElementById('model-source').textContent === 'manual'")
    assert api_threshold(base)["value"] == 0.3
    history = httpx.get(f"{base}/v1/models/{MODEL}/threshold/history", timeout=10).json()
    assert [c["source"] for c in history["changes"][:3]] == ["manual", "default", "manual"]
    assert history["changes"][2]["actor"] == "ada"


def test_inputs_are_checked_against_the_heads_range_as_they_are_typed(visit: Visit) -> None:
    page = visit.page
    visit.open_explorer(MODEL)
    for typed in ("-3", "1.5"):
        page.fill("#threshold-number", typed)
        assert "outside" in (page.text_content("#threshold-error") or "")
        assert page.get_attribute("#threshold-number", "aria-invalid") == "true"
        assert page.is_disabled("#set-manual")
    page.fill("#threshold-number", "0.25")
    assert page.text_content("#threshold-error") == ""
    assert page.is_enabled("#set-manual")

    page.select_option("#strategy", "target_tpr")
    page.fill("#target", "1.5")
    assert "between 0 and 1" in (page.text_content("#target-error") or "")
    assert page.is_disabled("#start-calibration")
    page.fill("#target", "0.9")
    assert page.is_enabled("#start-calibration")

    # The cost strategy asks for its two costs.
    assert page.is_hidden("#cost-fields")
    page.select_option("#strategy", "cost")
    assert page.is_visible("#cost-fp") and page.is_visible("#cost-fn")
    page.fill("#cost-fp", "0")
    page.fill("#cost-fn", "0")
    assert "both be 0" in (page.text_content("#cost-error") or "")
    page.fill("#cost-fn", "4")
    assert page.is_enabled("#start-calibration")


def test_a_value_typed_while_a_change_is_finishing_is_not_put_back(visit: Visit) -> None:
    """After a change the page refetches the model, then puts the slider on the value in force;
    a value typed meanwhile is the user's and stays."""
    page = visit.page
    visit.expect_status(401)
    visit.open_explorer(MODEL)
    chosen = 0.33 if api_threshold(visit.base)["value"] != 0.33 else 0.34  # not the one in force
    set_exact_threshold(visit, chosen)
    # Hold the page's refetch of the model (after the change) until the user has typed again.
    held: list[Route] = []
    page.route(f"**/v1/models/{MODEL}", lambda route: held.append(route))
    page.click("#set-manual")
    confirm(visit)
    give_key(visit, API_KEY)
    for _ in range(200):
        if held:
            break
        page.wait_for_timeout(50)
    assert held, "the page did not refetch the model after the change"
    set_exact_threshold(visit, 0.42)
    for route in held:
        route.continue_()
    page.unroute(f"**/v1/models/{MODEL}")
    wait_until(page, "document.getElementById('model-source').textContent === 'manual'")
    wait_until(page, "document.getElementById('threshold-panel').dataset.changed === '1'")
    assert api_threshold(visit.base)["value"] == chosen
    assert current_threshold(visit) == 0.42
    assert page.input_value("#threshold-number") == "0.42"
    # 0.42 is not the value in force: the page offers to make it so.
    assert page.is_enabled("#set-manual")
