"""A real chromium (Debian's, driven by Playwright) against a real `python -m service`."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.service.test_generated_client import API_KEY, running_service

CHROMIUM = Path("/usr/bin/chromium")
# Playwright cannot download its own browser here; Debian's runs headless with these.
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
WIDE = {"width": 1280, "height": 900}
NARROW = {"width": 390, "height": 844}

__all__ = ["API_KEY", "NARROW", "WIDE", "Visit"]


def origin(url: str) -> str:
    """`scheme://host:port` of `url`; a blob: URL has the origin of the page that made it."""
    parts = urlsplit(url.removeprefix("blob:"))
    return f"{parts.scheme}://{parts.netloc}"


@dataclass
class Visit:
    """One browser context on the service, and everything it asked for and complained about."""

    page: Any  # playwright.sync_api.Page; Any so that collecting needs no playwright
    base: str
    requests: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    expected_statuses: set[int] = field(default_factory=set)

    def expect_status(self, status: int) -> None:
        """Let the browser's own log of a `status` answer pass: the test provokes it on purpose."""
        self.expected_statuses.add(status)

    def unexpected_errors(self) -> list[str]:
        """Console errors and uncaught exceptions, less the logs of provoked answers."""
        allowed = tuple(
            f"the server responded with a status of {status}" for status in self.expected_statuses
        )
        return [error for error in self.console_errors if not any(a in error for a in allowed)]

    def open_explorer(self, model: str = "unet-sigmoid") -> None:
        """Load `/`, wait until it has listed the models, and choose `model`."""
        self.page.goto(f"{self.base}/")
        self.page.wait_for_selector("body[data-ready='true']", timeout=30_000)
        self.page.select_option("#model-select", model)
        self.page.wait_for_function(
            f"document.getElementById('model-head').dataset.model === {model!r}"
        )


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    """Debian's chromium under Playwright; the browser tests skip where it is not installed."""
    if not CHROMIUM.is_file():
        pytest.skip(
            f"browser tests need Debian's chromium at {CHROMIUM} (apt-get install chromium)"
        )
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def service(shipped_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`python -m service` with an API key on a free 127.0.0.1 port; yields its base URL."""
    with running_service(shipped_weights, tmp_path_factory.mktemp("state")) as base:
        yield base


@pytest.fixture
def visit(chromium: Any, service: str) -> Iterator[Visit]:
    """A fresh browser context on `service` that blocks every other host and, once the test is
    done, fails it on any console error and on any request that left the service's origin.
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


@pytest.fixture
def screenshots() -> Path | None:
    """Where to write the README's screenshots (UNET_SCREENSHOTS=docs), or None for no shots."""
    folder = os.environ.get("UNET_SCREENSHOTS")
    return Path(folder) if folder else None
