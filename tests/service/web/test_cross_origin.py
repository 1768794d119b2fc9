"""Cross-site request forgery in a real chromium: a page on another loopback port cannot change
the service (no API key set), while the explorer on the service itself still can."""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.helpers import dataset_files, make_zip, wait_for_calibration
from tests.servers import ServiceProcess
from tests.service.web.browser import LAUNCH_WAIT_S, Visit, wait_until
from tests.service.web.explorer_page import confirm

MODEL = "unet-sigmoid"


@pytest.fixture(scope="module")
def service(shipped_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The default set-up, which the issue attacked: `python -m service` without an API key."""
    state = tmp_path_factory.mktemp("state")
    running = ServiceProcess(shipped_weights, state, ready_within_s=LAUNCH_WAIT_S)
    try:
        yield running.base
    finally:
        running.stop()


class Attacker:
    """A web server on another 127.0.0.1 port: a different origin, the same site."""

    def __init__(self) -> None:
        self.pages: dict[str, str] = {}
        pages = self.pages

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = pages.get(self.path, "").encode()
                self.send_response(200 if body else 404)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def attacker() -> Iterator[Attacker]:
    site = Attacker()
    try:
        yield site
    finally:
        site.close()


def api(base: str, path: str = "") -> str:
    return f"{base}/v1/models/{MODEL}{path}"


def succeeded_calibration(base: str) -> str:
    """The id of a calibration an API client (no browser headers) ran, not activated."""
    started = httpx.post(
        api(base, "/calibrations"),
        files={"dataset": ("set.zip", make_zip(dataset_files(3, 64)), "application/zip")},
        data={"activate": "false"},
        timeout=60,
    )
    assert started.status_code == 202, started.text
    location = f"{base}{started.headers['location']}"
    state = wait_for_calibration(lambda: httpx.get(location, timeout=10).json())
    assert state["status"] == "succeeded", state
    return str(state["id"])


def state_of(base: str) -> tuple[Any, Any]:
    """The active threshold and the list of calibrations."""
    return (
        httpx.get(api(base, "/threshold"), timeout=10).json(),
        httpx.get(api(base, "/calibrations"), timeout=10).json(),
    )


def refused(page: Any, service: str, act: str) -> Any:
    """Run `act` (JavaScript) in `page`; the service's answer to the POST it makes."""
    with page.expect_response(
        lambda r: r.url.startswith(service) and r.request.method == "POST", timeout=30_000
    ) as answer:
        page.evaluate(act)
    return answer.value


def test_a_page_on_another_port_cannot_activate_calibrate_or_reset(
    chromium: Any, service: str, attacker: Attacker
) -> None:
    calibration_id = succeeded_calibration(service)
    activate = api(service, f"/calibrations/{calibration_id}/activate?force=true")
    upload = base64.b64encode(make_zip(dataset_files(2, 64))).decode()
    form = f"""<!doctype html><title>prize</title>
<form method="post" action="{activate}"><button id="claim">claim</button></form>"""
    attacker.pages["/form.html"] = form
    attacker.pages["/fetch.html"] = "<!doctype html><title>prize</title>"
    before = state_of(service)

    context = chromium.new_context()
    try:
        page = context.new_page()
        page.goto(f"{attacker.base}/fetch.html")
        # A zip upload with the parameters: a simple request, sent without a preflight.
        answer = refused(
            page,
            service,
            f"""() => {{
              const form = new FormData();
              const bytes = Uint8Array.from(atob("{upload}"), (c) => c.charCodeAt(0));
              form.append("dataset", new Blob([bytes], {{ type: "application/zip" }}), "x.zip");
              for (const [k, v] of [["strategy", "target_tpr"], ["target", "0.999"],
                                    ["force", "true"]]) form.append(k, v);
              fetch("{api(service, "/calibrations")}",
                    {{ method: "POST", mode: "no-cors", body: form }}).catch(() => {{}});
            }}""",
        )
        # (Its answer is opaque to the page; the same upload without browser headers gets 202.)
        assert answer.status == 403

        # A form post navigates the page to the service, whose problem names what the browser
        # sent: the other port's origin and same-site. A data: page has an opaque origin: null.
        for page_url, sent in (
            (f"{attacker.base}/form.html", f"({attacker.base})"),
            (f"data:text/html,{quote(form)}", "(null)"),
        ):
            page.goto(page_url)
            with page.expect_navigation(url=activate, timeout=30_000) as navigation:
                page.click("#claim")
            form_post = navigation.value
            assert form_post is not None and form_post.status == 403
            shown = page.content()
            assert "Cross-origin request refused" in shown and sent in shown
    finally:
        context.close()

    assert state_of(service) == before, "a refused request changed the service"
    # The very same activation from an API client, which sends no Origin, is accepted.
    assert httpx.post(activate, timeout=30).status_code == 200


def test_the_explorer_on_the_service_calibrates_activates_and_sets_a_threshold(
    visit: Visit, tmp_path: Path
) -> None:
    page, base = visit.page, visit.base
    dataset = tmp_path / "calibration.zip"
    dataset.write_bytes(make_zip(dataset_files(3, 64, seed=5)))
    visit.open_explorer(MODEL)
    posts: list[tuple[str, int, str | None]] = []
    page.on(
        "response",
        lambda r: (
            r.request.method in ("POST", "PUT")
            and posts.append((r.request.method, r.status, r.request.headers.get("origin")))
        ),
    )

    page.set_input_files("#dataset-input", str(dataset))
    page.uncheck("#activate-on-success")
    page.click("#start-calibration")
    page.locator("#calibration-report").wait_for(state="visible", timeout=120_000)
    assert "succeeded" in (page.text_content("#calibration-status") or "")
    page.click("#activate-calibration")
    confirm(visit)
    wait_until(
        page, "document.getElementById('model-source').textContent.startsWith('calibration')"
    )
    # A value typed while the page finishes the activation is kept (not put back to the one in
    # force), so it can be typed at once.
    page.fill("#threshold-number", "0.375")
    wait_until(page, "document.getElementById('threshold-exact').textContent === '0.375'")
    wait_until(page, "!document.getElementById('set-manual').disabled")
    page.click("#set-manual")
    confirm(visit)
    wait_until(page, "document.getElementById('model-source').textContent.startsWith('manual')")
    threshold = httpx.get(api(base, "/threshold"), timeout=10).json()
    assert threshold["source"] == "manual" and threshold["value"] == 0.375
    # The browser did send its origin: the service let these through as its own page's.
    assert [(method, status) for method, status, _ in posts] == [
        ("POST", 202),
        ("POST", 200),
        ("PUT", 200),
    ]
    assert {origin for _, _, origin in posts} == {base}


def test_swagger_ui_try_it_out_resets_the_threshold(visit: Visit) -> None:
    page, base = visit.page, visit.base
    assert httpx.put(api(base, "/threshold"), json={"value": 0.3}, timeout=10).status_code == 200
    page.goto(f"{base}/docs")
    operation = page.locator("#operations-thresholds-thresholds-reset")
    operation.locator(".opblock-summary").click()
    operation.locator(".try-out__btn").click()
    operation.locator("input[placeholder='model']").fill(MODEL)
    with page.expect_response(
        lambda r: r.url == api(base, "/threshold") and r.request.method == "DELETE"
    ) as answer:
        operation.locator(".execute").click()
    assert answer.value.status == 200
    assert httpx.get(api(base, "/threshold"), timeout=10).json()["source"] == "default"
