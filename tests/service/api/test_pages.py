"""The explorer page, the API docs and every asset they load come from the service itself."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.api.pages import STATIC_DIR
from service.app import create_app
from service.settings import Settings
from tests.helpers import REMOTE, loaded

SVG_NAMESPACE = "http://www.w3.org/2000/svg"  # a name, never fetched


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    # No `with`: the pages need no models, so the lifespan (and its model loading) never runs.
    state = tmp_path_factory.mktemp("pages-state")
    return TestClient(create_app(Settings(state_dir=state)))


def test_the_explorer_and_everything_it_loads_are_served_from_here(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    pending, seen = ["/"], set()
    while pending:
        path = pending.pop()
        if path in seen:
            continue
        seen.add(path)
        response = client.get(path)
        assert response.status_code == 200, path
        text = response.text.replace(SVG_NAMESPACE, "")
        assert not REMOTE.search(text), f"{path} refers to another host"
        base = path.rsplit("/", 1)[0]
        for target in loaded(text):
            if target.startswith(("/v1/", "/docs", "/redoc", "data:", "#")):
                continue  # the API, the docs pages (tested on their own), inline and in-page
            pending.append(target if target.startswith("/") else f"{base}/{target.lstrip('./')}")
    assert {"/static/explorer.js", "/static/explorer.css", "/static/api.js"} <= seen
    # Every file the page needs is one the package ships (pyproject's package-data).
    assert {path.removeprefix("/static/") for path in seen - {"/"}} <= {
        file.name for file in STATIC_DIR.iterdir()
    }


def test_the_pages_are_not_api_operations(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert not {"/", "/docs", "/redoc"} & set(paths)
    api = ("/v1/", "/v2", "/healthz", "/readyz", "/metrics")  # /v2: the inference protocol's
    assert all(path.startswith(api) for path in paths), sorted(paths)


def test_static_files_are_package_data() -> None:
    pyproject = (Path(__file__).parents[3] / "pyproject.toml").read_text()
    assert 'service = ["api/static/*"]' in pyproject
    assert all(file.is_file() for file in STATIC_DIR.iterdir())  # the glob takes no folders


def test_static_files_count_under_one_metrics_label(client: TestClient) -> None:
    # Any path can be asked for under /static; each must not become a label of its own.
    for path in ("/static/explorer.js", "/static/no-such-1", "/static/no-such-2"):
        client.get(path)
    series = [
        line
        for line in client.get("/metrics").text.splitlines()
        if line.startswith("unet_http_requests_total") and "static" in line
    ]
    assert 'route="/static/{path}",status="200"' in "".join(series)
    assert 'route="/static/{path}",status="404"} 2.0' in "".join(series)
    assert "no-such" not in "".join(series)
