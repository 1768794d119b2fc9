"""A real chromium (Debian's, driven by Playwright) against a real `python -m service`."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.servers import ServiceProcess
from tests.service.web.browser import (
    API_KEY,
    CHROMIUM,
    LAUNCH_ARGS,
    LAUNCH_WAIT_S,
    REPORT_CSP_VIOLATIONS,
    WIDE,
    Visit,
    origin,
)


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    """Debian's chromium under Playwright; the browser tests skip where it is not installed."""
    if not CHROMIUM.is_file():
        pytest.skip(
            f"browser tests need Debian's chromium at {CHROMIUM} (apt-get install chromium)"
        )
    from playwright import sync_api  # a dev dependency: no skip where it is missing

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def service(shipped_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`python -m service` with an API key on a free 127.0.0.1 port; yields its base URL."""
    state = tmp_path_factory.mktemp("state")
    running = ServiceProcess(
        shipped_weights, state, {"UNET_API_KEY": API_KEY}, ready_within_s=LAUNCH_WAIT_S
    )
    try:
        yield running.base
    finally:
        running.stop()


@pytest.fixture
def visit(chromium: Any, service: str) -> Iterator[Visit]:
    """A fresh browser context on `service` that blocks every other host and, once the test is
    done, fails it on any console error, any Content-Security-Policy violation and any request
    that left the service's origin.
    """
    context = chromium.new_context(viewport=WIDE, accept_downloads=True)
    page = context.new_page()
    seen = Visit(page, service)
    home = origin(service)

    def only_the_service(route: Any) -> None:
        if origin(route.request.url) == home:
            route.continue_()
        else:
            seen.blocked.append(route.request.url)
            route.abort()

    context.route("**/*", only_the_service)
    context.expose_binding("__cspViolation", lambda _source, what: seen.csp_violations.append(what))
    context.add_init_script(REPORT_CSP_VIOLATIONS)
    page.on("request", lambda request: seen.requests.append(request.url))
    page.on(
        "console",
        lambda message: message.type == "error" and seen.console_errors.append(message.text),
    )
    page.on("pageerror", lambda error: seen.console_errors.append(f"uncaught: {error}"))
    try:
        yield seen
    finally:
        context.close()
    assert not seen.blocked, f"requests to other hosts: {seen.blocked}"
    # data: URLs are inline content (Swagger UI's icons), not requests to any host.
    elsewhere = [u for u in seen.requests if not u.startswith("data:") and origin(u) != home]
    assert not elsewhere, f"requests that left {home}: {elsewhere}"
    assert not seen.unexpected_errors(), f"console errors: {seen.unexpected_errors()}"
    assert not seen.csp_violations, f"Content-Security-Policy violations: {seen.csp_violations}"


@pytest.fixture
def screenshots() -> Path | None:
    """Where to write the README's screenshots (UNET_SCREENSHOTS=docs), or None for no shots."""
    folder = os.environ.get("UNET_SCREENSHOTS")
    return Path(folder) if folder else None
