"""`/docs` and `/redoc` in a real chromium with every other host blocked."""

from __future__ import annotations

import httpx

from tests.service.web.browser import Visit


def summaries(base: str) -> list[str]:
    spec = httpx.get(f"{base}/openapi.json", timeout=10).json()
    return [
        operation["summary"]
        for item in spec["paths"].values()
        for operation in item.values()
        if isinstance(operation, dict) and "responses" in operation
    ]


def test_swagger_ui_lists_every_operation_offline(visit: Visit) -> None:
    expected = summaries(visit.base)
    visit.page.goto(f"{visit.base}/docs")
    visit.page.wait_for_selector(".opblock", timeout=30_000)
    shown = visit.page.locator(".opblock-summary-description").all_text_contents()
    assert sorted(shown) == sorted(expected)
    assert visit.requests, "the fixture checks each of these stayed on the service"


def test_redoc_lists_every_operation_offline(visit: Visit) -> None:
    expected = summaries(visit.base)
    visit.page.goto(f"{visit.base}/redoc")
    visit.page.wait_for_selector(".api-content h2", timeout=30_000)
    headings = [h.strip() for h in visit.page.locator(".api-content h2").all_text_contents()]
    assert all(summary in headings for summary in expected), headings
