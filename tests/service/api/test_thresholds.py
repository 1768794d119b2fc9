"""Threshold endpoints through the real app: override, reset, history, auth and restarts."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from service.app import create_app
from service.settings import Settings
from service.state.store import ThresholdStore
from tests.helpers import (
    SHIPPED_DIGESTS,
    STAMPED_DIGESTS,
    TINY_MODEL,
    assert_problem,
    dataset_files,
    make_zip,
    png,
    trace_sql,
    until,
    wait_for_calibration,
)

BASE = f"/v1/models/{TINY_MODEL}"
KEY = "sesame"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
def settings(tmp_path: Path, tiny_model_dir: Path) -> Settings:
    """The tiny model, an API key, and a small tile so that the warm-up is short."""
    return Settings(
        model_dir=tiny_model_dir,
        state_dir=tmp_path / "state",
        api_key=SecretStr(KEY),
        tile_size=64,
    )


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    """The app over HTTP, its lifespan running."""
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def history(client: TestClient) -> list[dict[str, Any]]:
    """The tiny model's threshold changes, newest first."""
    response = client.get(f"{BASE}/threshold/history")
    assert response.status_code == 200, response.text
    changes: list[dict[str, Any]] = response.json()["changes"]
    return changes


def default_of(client: TestClient) -> float:
    """The tiny checkpoint's own threshold."""
    value: float = client.get(BASE).json()["default_threshold"]
    return value


def test_history_starts_empty_and_records_who_changed_what(client: TestClient) -> None:
    assert history(client) == []
    default = default_of(client)
    assert client.put(f"{BASE}/threshold", json={"value": 0.3}, headers=AUTH).status_code == 200
    put = client.put(f"{BASE}/threshold", json={"value": 0.6}, headers={**AUTH, "X-Actor": "alice"})
    assert put.json()["value"] == 0.6

    reset = client.delete(f"{BASE}/threshold", headers={**AUTH, "X-Actor": "bob"})
    assert reset.status_code == 200, reset.text
    assert reset.json() == {
        "value": default,
        "source": "default",
        "calibration_id": None,
        "updated": None,
    }
    assert client.get(f"{BASE}/threshold").json() == reset.json()

    changes = history(client)
    assert [(c["value"], c["source"], c["actor"]) for c in changes] == [
        (default, "default", "bob"),
        (0.6, "manual", "alice"),
        (0.3, "manual", None),
    ]
    assert [(c["previous_value"], c["previous_source"]) for c in changes] == [
        (0.6, "manual"),
        (0.3, "manual"),
        (default, "default"),
    ]
    assert changes[0]["at"] >= changes[1]["at"] >= changes[2]["at"]
    digest = client.get(BASE).json()["digest"]
    assert {c["digest"] for c in changes} == {digest}
    assert all(c["calibration_id"] is None and c["reason"] is None for c in changes)

    # Resetting what is already the default answers the same and records nothing.
    again = client.delete(f"{BASE}/threshold", headers=AUTH)
    assert again.status_code == 200 and again.json() == reset.json()
    assert len(history(client)) == 3


def test_the_active_threshold_follows_a_reset(client: TestClient) -> None:
    until(lambda: client.get("/readyz").status_code == 200, "service not ready")
    image = png(np.full((32, 32), 128, np.uint8))
    files = {"image": ("x.png", image, "image/png")}
    client.put(f"{BASE}/threshold", json={"value": 0.2}, headers=AUTH)
    assert client.post(f"{BASE}/mask", files=files).headers["X-Threshold-Source"] == "manual"
    client.delete(f"{BASE}/threshold", headers=AUTH)
    mask = client.post(f"{BASE}/mask", files=files)
    assert mask.headers["X-Threshold-Source"] == "default"
    assert float(mask.headers["X-Threshold"]) == default_of(client)
    metrics = client.get("/metrics").text
    assert f'unet_active_threshold{{model="{TINY_MODEL}"}} {default_of(client)}' in metrics


def test_reset_needs_the_api_key_and_history_does_not(client: TestClient) -> None:
    client.put(f"{BASE}/threshold", json={"value": 0.7}, headers=AUTH)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        refused = client.delete(f"{BASE}/threshold", headers=headers)
        assert "UNET_API_KEY" in assert_problem(refused, 401)["detail"]
        assert refused.headers["WWW-Authenticate"] == "Bearer"
    assert client.get(f"{BASE}/threshold").json()["value"] == 0.7
    assert len(history(client)) == 1  # readable without the key


def test_unknown_models_and_bad_actors_are_problems(client: TestClient) -> None:
    for response in (
        client.get("/v1/models/nope/threshold/history"),
        client.delete("/v1/models/nope/threshold", headers=AUTH),
    ):
        assert "'nope'" in assert_problem(response, 404)["detail"]
    too_long = client.delete(f"{BASE}/threshold", headers={**AUTH, "X-Actor": "x" * 201})
    assert_problem(too_long, 422)
    assert history(client) == []


def test_history_and_reset_survive_a_restart(settings: Settings) -> None:
    with TestClient(create_app(settings)) as client:
        client.put(f"{BASE}/threshold", json={"value": 0.45}, headers=AUTH)
        client.delete(f"{BASE}/threshold", headers={**AUTH, "X-Actor": "carol"})
        before = history(client)
    with TestClient(create_app(settings)) as client:
        assert history(client) == before
        assert client.get(f"{BASE}/threshold").json()["source"] == "default"
        client.put(f"{BASE}/threshold", json={"value": 0.55}, headers=AUTH)
    with TestClient(create_app(settings)) as client:
        assert client.get(f"{BASE}/threshold").json()["value"] == 0.55
        assert [c["value"] for c in history(client)][:2] == [0.55, before[0]["value"]]


def test_thresholds_stored_before_the_stamp_went_do_not_apply_to_the_shipped_models(
    shipped_weights: Path, tmp_path: Path
) -> None:
    """The consequence of the shipped JSON losing its `preprocessing` stamp, on upgrade."""
    state = tmp_path / "state"
    old = ThresholdStore(state / "thresholds.sqlite3")
    for name, digest in STAMPED_DIGESTS.items():
        old.set_manual(name, digest, 0.3, actor="ops")
    old.close()
    with TestClient(create_app(Settings(model_dir=shipped_weights, state_dir=state))) as client:
        for name in STAMPED_DIGESTS:
            served = client.get(f"/v1/models/{name}/threshold").json()
            default = client.get(f"/v1/models/{name}").json()["default_threshold"]
            assert (served["source"], served["value"]) == ("default", default)
            note = client.get(f"/v1/models/{name}/threshold/history").json()["changes"][0]
            assert "checkpoint changed" in note["reason"] and note["previous_value"] == 0.3
            assert note["digest"] == SHIPPED_DIGESTS[name]


def test_a_threshold_of_another_checkpoint_shows_in_the_history(settings: Settings) -> None:
    # What a state folder holds after the tiny model's checkpoint was replaced.
    old = ThresholdStore(settings.state_dir / "thresholds.sqlite3")
    old.set_manual(TINY_MODEL, "0" * 64, 0.9, actor="dave")
    old.close()
    with TestClient(create_app(settings)) as client:
        assert client.get(f"{BASE}/threshold").json()["source"] == "default"
        note, earlier = history(client)
        assert (note["source"], note["value"]) == ("default", default_of(client))
        assert (note["previous_value"], note["previous_source"]) == (0.9, "manual")
        assert "checkpoint changed" in note["reason"] and note["actor"] is None
        assert (earlier["digest"], earlier["value"]) == ("0" * 64, 0.9)
    with TestClient(create_app(settings)) as client:  # noted once, not at every start
        assert len(history(client)) == 2


def test_calibrations_enter_the_history_with_their_id(client: TestClient) -> None:
    dataset = {"dataset": ("set.zip", make_zip(dataset_files(2)), "application/zip")}
    started = client.post(
        f"{BASE}/calibrations", files=dataset, data={"activate": "false"}, headers=AUTH
    )
    assert started.status_code == 202, started.text
    location = started.headers["location"]
    assert wait_for_calibration(lambda: client.get(location).json())["status"] == "succeeded"
    assert history(client) == []  # not activated: nothing changed
    activated = client.post(f"{location}/activate", headers={**AUTH, "X-Actor": "erin"})
    assert activated.status_code == 200, activated.text
    (change,) = history(client)
    assert (change["source"], change["actor"]) == ("calibration", "erin")
    assert change["calibration_id"] == started.json()["id"]
    assert change["value"] == activated.json()["value"] == client.get(location).json()["threshold"]


def test_async_routes_keep_sqlite_off_the_event_loop(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    statements = trace_sql(monkeypatch)
    with TestClient(create_app(settings)) as client:
        until(lambda: client.get("/readyz").status_code == 200, "service not ready")
        loop_thread = client.portal.call(threading.get_ident)  # type: ignore[union-attr]
        client.put(f"{BASE}/threshold", json={"value": 0.4}, headers=AUTH)  # memory forgets
        statements.clear()
        image = {"image": ("x.png", png(np.zeros((32, 32), np.uint8)), "image/png")}
        assert client.post(f"{BASE}/mask", files=image).headers["X-Threshold"] == "0.4"
        dataset = {"dataset": ("set.zip", make_zip(dataset_files(2)), "application/zip")}
        started = client.post(f"{BASE}/calibrations", files=dataset, headers=AUTH)
        assert started.status_code == 202, started.text
        location = started.headers["location"]
        assert wait_for_calibration(lambda: client.get(location).json())["status"] == "succeeded"
        on_loop = [sql for thread, sql in statements if thread == loop_thread]
    assert statements  # the tracer saw the store at work
    assert on_loop == []


def test_history_comes_in_pages(client: TestClient) -> None:
    for value in (0.31, 0.32, 0.33, 0.34, 0.35, 0.36, 0.37):
        assert client.put(f"{BASE}/threshold", json={"value": value}, headers=AUTH).is_success
    page = client.get(f"{BASE}/threshold/history", params={"limit": 5})
    assert page.status_code == 200, page.text
    assert [c["value"] for c in page.json()["changes"]] == [0.37, 0.36, 0.35, 0.34, 0.33]
    following = page.headers["link"]
    assert following.endswith('>; rel="next"') and "offset=5" in following
    rest = client.get(following[1 : following.index(">")])
    assert [c["value"] for c in rest.json()["changes"]] == [0.32, 0.31]
    assert "link" not in rest.headers  # the last page
    assert len(history(client)) == 7  # the default page holds up to 100
    for bad in ({"limit": -1}, {"limit": 0}, {"limit": 1001}, {"offset": -1}, {"limit": "x"}):
        assert_problem(client.get(f"{BASE}/threshold/history", params=bad), 422)


def test_a_threshold_read_sees_a_change_another_process_just_made(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each process keeps thresholds in memory for inference; a read a client makes must not
    # come from that memory. A long recheck interval makes the old lag certain, not likely.
    lease_s, _, read_only = ThresholdStore.__init__.__defaults__ or ()
    monkeypatch.setattr(ThresholdStore.__init__, "__defaults__", (lease_s, 3600.0, read_only))
    with (
        TestClient(create_app(settings)) as writer,
        TestClient(create_app(settings)) as reader,
    ):
        assert reader.get(f"{BASE}/threshold").json()["source"] == "default"  # now in memory
        assert writer.put(f"{BASE}/threshold", json={"value": 0.42}, headers=AUTH).is_success
        seen = reader.get(f"{BASE}/threshold").json()
        assert (seen["value"], seen["source"]) == (0.42, "manual")
        listed = reader.get("/v1/models").json()["models"]
        assert [m["threshold"]["value"] for m in listed if m["name"] == TINY_MODEL] == [0.42]
