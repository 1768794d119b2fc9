"""Cross-site request forgery: another origin's page cannot change state; API clients can."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from starlette.datastructures import Headers

from service.api.origin import refusal
from service.app import create_app
from service.settings import Settings
from tests.helpers import TINY_MODEL, assert_problem, dataset_files, make_zip

MODEL = f"/v1/models/{TINY_MODEL}"
# What a browser sends with a form post, a `fetch` or an upload from a page on another origin.
CROSS_SITE = {
    "another site": {"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"},
    "another port": {"Origin": "http://testserver:8001", "Sec-Fetch-Site": "same-site"},
    "a sandboxed frame": {"Origin": "null", "Sec-Fetch-Site": "cross-site"},
    "null, no fetch metadata": {"Origin": "null"},
    "an old browser": {"Origin": "http://evil.example"},
    "a forged forwarded host": {
        "Origin": "http://evil.example",
        "X-Forwarded-Host": "evil.example",
    },
}
# The explorer on the service itself (TestClient's host is `testserver`) and plain API clients.
SAME_ORIGIN = {
    "no browser headers": {},
    "the explorer": {"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"},
    "an old browser on this host": {"Origin": "http://testserver"},
    "fetch metadata only": {"Sec-Fetch-Site": "same-origin"},
}


@pytest.fixture(scope="module")
def client(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """The default set-up: no API key."""
    settings = Settings(
        model_dir=tiny_model_dir,
        state_dir=tmp_path_factory.mktemp("origin-state"),
        allowed_origins="https://Dashboard.example:443/, http://127.0.0.1:9000",
    )
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def dataset() -> bytes:
    return make_zip(dataset_files(2, 64))


def calibrate(client: TestClient, dataset: bytes, headers: dict[str, str]) -> object:
    """The upload of the issue: a target_tpr of 0.999, forced, activated on success."""
    return client.post(
        f"{MODEL}/calibrations",
        files={"dataset": ("set.zip", dataset, "application/zip")},
        data={"strategy": "target_tpr", "target": "0.999", "force": "true", "activate": "false"},
        headers=headers,
    )


@pytest.mark.parametrize("who", CROSS_SITE)
def test_a_cross_site_page_cannot_calibrate_activate_or_set_a_threshold(
    client: TestClient, dataset: bytes, who: str
) -> None:
    headers = CROSS_SITE[who]
    before_calibrations = client.get(f"{MODEL}/calibrations").json()
    before = client.get(f"{MODEL}/threshold").json()

    refused = calibrate(client, dataset, headers)
    problem = assert_problem(refused, 403)
    assert problem["type"].endswith("/cross-origin-request")
    assert "UNET_ALLOWED_ORIGINS" in problem["detail"]
    assert refused.headers["connection"] == "close"  # its body was never read
    assert_problem(
        client.post(f"{MODEL}/calibrations/c1/activate?force=true", headers=headers), 403
    )
    assert_problem(client.put(f"{MODEL}/threshold", json={"value": 0.0}, headers=headers), 403)
    assert_problem(client.delete(f"{MODEL}/threshold", headers=headers), 403)

    assert client.get(f"{MODEL}/calibrations").json() == before_calibrations
    assert client.get(f"{MODEL}/threshold").json() == before
    # Reading stays open to any page: only changes are refused.
    assert client.get(f"{MODEL}/threshold", headers=headers).status_code == 200


@pytest.mark.parametrize("who", SAME_ORIGIN)
def test_the_explorer_and_api_clients_calibrate_and_set_thresholds(
    client: TestClient, dataset: bytes, who: str
) -> None:
    headers = SAME_ORIGIN[who]
    assert calibrate(client, dataset, headers).status_code == 202
    answer = client.put(f"{MODEL}/threshold", json={"value": 0.25}, headers=headers)
    assert answer.status_code == 200, answer.text
    assert client.delete(f"{MODEL}/threshold", headers=headers).status_code == 200


@pytest.mark.parametrize(
    "origin",
    ["https://dashboard.example", "http://127.0.0.1:9000", "https://DASHBOARD.example:443"],
)
def test_a_listed_origin_may_change_state(client: TestClient, dataset: bytes, origin: str) -> None:
    headers = {"Origin": origin, "Sec-Fetch-Site": "cross-site"}
    assert calibrate(client, dataset, headers).status_code == 202
    unlisted = {"Origin": "http://127.0.0.1:9001", "Sec-Fetch-Site": "same-site"}
    assert_problem(calibrate(client, dataset, unlisted), 403)


def test_allowed_origins_are_a_comma_separated_list_of_origins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("UNET_ALLOWED_ORIGINS", " https://A.example/ ,http://b.example:80,")
    assert Settings().allowed_origins == ("https://a.example", "http://b.example")
    assert Settings(allowed_origins="").allowed_origins == ()
    for wrong in ("https://a.example/path", "a.example", "ftp://a.example", "http://a:port"):
        monkeypatch.setenv("UNET_ALLOWED_ORIGINS", wrong)
        with pytest.raises(ValidationError, match="origin"):
            Settings()


@pytest.mark.parametrize(
    ("headers", "passes"),
    [
        ({"origin": "https://svc.example", "host": "svc.example:443"}, True),
        ({"origin": "http://[::1]:8000", "host": "[::1]:8000"}, True),
        ({"origin": "http://svc.example:8000", "host": "svc.example:8001"}, False),
        # Behind a proxy that rewrote Host, a browser without fetch metadata is refused...
        ({"origin": "https://svc.example", "host": "127.0.0.1:8000"}, False),
        # ...unless the public origin is listed; fetch-metadata browsers are unaffected.
        ({"origin": "https://listed.example", "host": "127.0.0.1:8000"}, True),
        ({"origin": "https://svc.example", "sec-fetch-site": "same-origin", "host": "x"}, True),
        ({"origin": "not a url", "host": "svc.example"}, False),
    ],
)
def test_how_same_origin_is_judged(headers: dict[str, str], passes: bool) -> None:
    why = refusal("POST", Headers(headers), {"https://listed.example"})
    assert (why is None) == passes, why
    assert refusal("GET", Headers(headers), ()) is None
