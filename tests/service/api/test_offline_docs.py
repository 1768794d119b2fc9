"""`/docs` and `/redoc` load Swagger UI, ReDoc and their assets from the service itself."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from service.api.docs import REDOC_REMOTE_LOGO
from service.app import create_app
from service.settings import Settings
from tests.helpers import REMOTE, loaded


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    # No `with`: the docs need no models, so the lifespan (and its model loading) never runs.
    state = tmp_path_factory.mktemp("docs-state")
    return TestClient(create_app(Settings(state_dir=state)))


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_api_docs_load_their_assets_from_here(client: TestClient, page: str) -> None:
    response = client.get(page)
    assert response.status_code == 200
    assets = loaded(response.text)
    assert assets and all(asset.startswith("/") and not asset.startswith("//") for asset in assets)
    assert not REMOTE.search(response.text)  # no Google Fonts for ReDoc either
    for asset in assets:
        assert client.get(asset).status_code == 200, asset
    assert "/openapi.json" in response.text


def test_redoc_script_has_no_remote_logo(client: TestClient) -> None:
    script = client.get("/docs-static/redoc.standalone.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith(
        "text/javascript"
    )
    assert len(script.content) > 100_000 and REDOC_REMOTE_LOGO not in script.content
