"""What the browser tests share: chromium's launch flags, viewports, and a recorded visit."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

API_KEY = "web-test-key"
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
# Reports every Content-Security-Policy violation of every frame to the test, across navigations.
REPORT_CSP_VIOLATIONS = """document.addEventListener("securitypolicyviolation", (event) => {
  window.__cspViolation(`${event.violatedDirective} blocked ${event.blockedURI || "inline"}`
    + ` at ${event.sourceFile}:${event.lineNumber} on ${document.location.pathname}`);
}, true);"""
# A service loads and warms two models before it is ready: minutes when the machine is busy.
LAUNCH_WAIT_S = 180.0
WIDE = {"width": 1280, "height": 900}
NARROW = {"width": 390, "height": 844}


# Polls `condition` once a frame; its source is part of the function, so no eval() is needed.
WAIT_UNTIL = """async ([timeoutMs, condition]) => {
  const started = performance.now();
  while (!(%s)) {
    if (performance.now() - started > timeoutMs) throw new Error(`timed out: ${condition}`);
    await new Promise((done) => requestAnimationFrame(done));
  }
}"""


def wait_until(page: Any, condition: str, timeout_ms: float = 30_000) -> None:
    """Wait until the JavaScript expression `condition` is true in `page`.

    Playwright's own wait_for_function eval()s its predicate in the page, which the service's
    Content-Security-Policy rightly forbids; page.evaluate runs through the DevTools protocol.
    """
    page.evaluate(WAIT_UNTIL % condition, [timeout_ms, condition])


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
    csp_violations: list[str] = field(default_factory=list)
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
        wait_until(self.page, f"document.getElementById('model-head').dataset.model === {model!r}")
