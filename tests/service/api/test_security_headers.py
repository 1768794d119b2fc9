"""Every answer has a Content-Security-Policy, nosniff and no framing; pages allow no inline
script but their own, by hash."""

from __future__ import annotations

import base64
import hashlib
import re

import pytest
from fastapi.testclient import TestClient
from httpx import Response

from service.api.pages import STATIC_DIR
from service.app import create_app
from service.settings import Settings
from tests.helpers import assert_problem


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    # No `with`: pages and refusals need no models, so the lifespan never runs.
    return TestClient(create_app(Settings(state_dir=tmp_path_factory.mktemp("headers-state"))))


def directives(response: Response) -> dict[str, str]:
    """The answer's CSP as directive -> sources."""
    text = response.headers["content-security-policy"]
    return dict(part.strip().partition(" ")[::2] for part in text.split(";"))


def assert_protected(response: Response) -> dict[str, str]:
    """nosniff, no framing and a CSP that loads nothing from elsewhere; the CSP's directives."""
    headers = response.headers
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["x-frame-options"] == "DENY"
    policy = directives(response)
    assert policy["frame-ancestors"] == "'none'"
    assert policy["default-src"] == "'self'" and policy["object-src"] == "'none'"
    assert "'unsafe-inline'" not in policy.get("script-src", "")
    assert "'unsafe-eval'" not in policy.get("script-src", "")
    return policy


def test_the_explorer_has_csp_nosniff_and_frame_ancestors(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200
    policy = assert_protected(page)
    # The page has no inline script or style at all: it needs no exception from 'self'.
    assert "script-src" not in policy and "style-src" not in policy
    assert not re.search(r"<script(?![^>]*\bsrc=)|<style|\sstyle=|\son\w+=", page.text)


def test_every_static_file_is_protected(client: TestClient) -> None:
    for file in STATIC_DIR.iterdir():
        answer = client.get(f"/static/{file.name}")
        assert answer.status_code == 200, file.name
        assert_protected(answer)


def test_swagger_ui_allows_its_one_inline_script_by_hash(client: TestClient) -> None:
    page = client.get("/docs")
    policy = assert_protected(page)
    inline = re.findall(r"<script>(.*?)</script>", page.text, re.DOTALL)
    assert len(inline) == 1
    digest = base64.b64encode(hashlib.sha256(inline[0].encode()).digest()).decode()
    assert policy["script-src"] == f"'self' 'sha256-{digest}'"
    assert "style-src" not in policy


def test_redoc_and_the_docs_assets_are_protected(client: TestClient) -> None:
    page = client.get("/redoc")
    policy = assert_protected(page)
    assert policy["script-src"] == "'self'"
    for asset in ("redoc.standalone.js", "swagger-ui-bundle.js", "swagger-ui.css"):
        assert_protected(client.get(f"/docs-static/{asset}"))
    assert_protected(client.get("/openapi.json"))


def test_problems_and_refusals_are_protected(client: TestClient) -> None:
    missing = client.get("/no-such-page")
    assert_problem(missing, 404)
    assert_protected(missing)
    refused = client.post(
        "/v1/models/any/calibrations", headers={"Origin": "null", "Sec-Fetch-Site": "cross-site"}
    )
    assert_problem(refused, 403)
    assert_protected(refused)
