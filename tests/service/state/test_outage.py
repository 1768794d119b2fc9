"""A database that fails while the service runs: a stopped PostgreSQL, a corrupted SQLite file.

Changes are refused with a typed error (503 with Retry-After over HTTP) and not applied,
inference keeps the last thresholds it knew and says they are stale, `/readyz` says the store is
failing, and everything comes back by itself once the database does.
"""

from __future__ import annotations

import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from model.data.synth import generate_pair, pair_rng
from service.app import create_app
from service.settings import Settings
from service.state.errors import StoreFailing
from service.state.records import JobParams
from service.state.store import ThresholdStore
from tests import postgres
from tests.helpers import (
    TINY_MODEL,
    assert_problem,
    dataset_files,
    make_zip,
    png,
    until,
    wait_for_calibration,
)

BASE = f"/v1/models/{TINY_MODEL}"
DIGEST = "d" * 64


def image() -> bytes:
    """A small synthetic image for the tiny model."""
    return png(generate_pair(pair_rng(5, 0), 64)[0])


def test_a_stopped_postgresql_refuses_changes_and_serves_the_last_thresholds(
    database: tuple[str, postgres.Control], caplog: pytest.LogCaptureFixture
) -> None:
    url, control = database
    store = ThresholdStore(url, recheck_s=0.0)
    failed: list[str] = []  # what the service counts as unet_store_errors_total{operation}
    store.database.on_failure = failed.append
    store.set_manual("m", DIGEST, 0.3)
    assert store.active_threshold("m", DIGEST).value == 0.3  # type: ignore[union-attr]
    assert store.active_threshold("m", "unknown") is None
    assert failed == []
    control.stop()
    with pytest.raises(StoreFailing, match="nothing was changed"):
        store.set_manual("m", DIGEST, 0.4)
    with pytest.raises(StoreFailing):
        store.current_threshold("m", DIGEST)  # a client's read says so rather than guess
    for _ in range(50):  # inference: the last known value, marked stale, and no new error
        stale = store.active_threshold("m", DIGEST)
        assert stale is not None and (stale.value, stale.stale) == (0.3, True)
    assert store.active_threshold("m", "unknown") is None  # known to be the default
    with pytest.raises(StoreFailing):
        store.active_threshold("m", "never-seen")
    assert store.state().startswith("failing since ")
    assert "read" in failed and {"write", "commit"} & set(failed)
    failing_lines = [r for r in caplog.records if "is failing" in r.getMessage()]
    assert len(failing_lines) == 1 and failing_lines[0].exc_info is None  # one line, no trace
    control.start()
    until(lambda: store.state() == "writable", "the store did not reconnect by itself")
    store.set_manual("m", DIGEST, 0.5)
    fresh = store.active_threshold("m", DIGEST)
    assert fresh is not None and (fresh.value, fresh.stale) == (0.5, False)
    assert [change.value for change in store.history("m")] == [0.5, 0.3]  # 0.4 never landed
    assert any("answers again" in r.getMessage() for r in caplog.records)
    store.close()


def test_an_outage_does_not_make_other_processes_fail_a_running_calibration(
    database: tuple[str, postgres.Control],
) -> None:
    url, control = database
    owner, other = ThresholdStore(url, lease_s=0.5), ThresholdStore(url, lease_s=0.5)
    job = owner.jobs.new_calibration("m", DIGEST, "f1", None, JobParams(), True).id
    assert owner.jobs.mark_running(job)
    control.stop()
    with pytest.raises(StoreFailing):
        other.jobs.renew_leases()  # every process meets the outage; nobody can renew
    lapsed = time.time() + 0.5
    until(lambda: time.time() > lapsed, "time stood still")
    control.start()
    # Back, with every lease lapsed: the owner had no chance to renew, so its job is alive.
    until(lambda: _answers(other), "the store did not reconnect by itself")
    assert other.jobs.fail_expired("stopped") == 0
    assert owner.jobs.renew_leases([job]) == 1
    record = other.get_calibration("m", job)
    assert record is not None and record.status == "running"
    owner.close()
    other.close()


def _answers(store: ThresholdStore) -> bool:
    try:
        store.jobs.renew_leases()
    except StoreFailing:
        return False
    return True


def test_a_corrupted_sqlite_file_refuses_changes_and_readyz_says_so(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    settings = Settings(model_dir=tiny_model_dir, state_dir=tmp_path / "state", tile_size=64)
    with TestClient(create_app(settings)) as client:
        store: ThresholdStore = client.app.state.services.store  # type: ignore[attr-defined]
        assert client.put(f"{BASE}/threshold", json={"value": 0.4}).status_code == 200
        until(lambda: client.get("/readyz").status_code == 200, "never ready")
        assert client.get("/readyz").json()["state"] == "writable"
        path = settings.state_dir / "thresholds.sqlite3"
        with store.engine.connect() as db:
            db.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        shutil.copy(path, tmp_path / "good.sqlite3")
        path.write_bytes(b"\xa5" * path.stat().st_size)
        # Pooled connections keep the pages they read; new ones (as when the pool recycles)
        # read the corrupt file.
        store.engine.dispose()

        put = client.put(f"{BASE}/threshold", json={"value": 0.6})
        body = assert_problem(put, 503)
        assert body["type"].endswith("state-failing") and "not a database" in body["detail"]
        assert int(put.headers["retry-after"]) >= 1
        dataset = {"dataset": ("d.zip", make_zip(dataset_files(2, 64)), "application/zip")}
        started = client.post(f"{BASE}/calibrations", files=dataset)
        assert_problem(started, 503)
        assert client.app.state.services.jobs._jobs == {}  # type: ignore[attr-defined]
        assert list((settings.state_dir / "uploads").rglob("calibration-*")) == []
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["state"].startswith("failing since ")
        assert "not a database" in ready.json()["state"]
        mask = client.post(f"{BASE}/mask", files={"image": ("x.png", image(), "image/png")})
        assert mask.status_code == 200
        assert (mask.headers["x-threshold"], mask.headers["x-threshold-stale"]) == ("0.4", "true")
        read = client.get(f"{BASE}/threshold")
        assert_problem(read, 503)
        assert int(read.headers["retry-after"]) >= 1

        shutil.copy(tmp_path / "good.sqlite3", path)  # repaired from a backup
        store.engine.dispose()
        until(lambda: client.get("/readyz").json()["state"] == "writable", "no recovery")
        assert client.get(f"{BASE}/threshold").json()["value"] == 0.4  # 0.6 was not applied
        mask = client.post(f"{BASE}/mask", files={"image": ("x.png", image(), "image/png")})
        assert "x-threshold-stale" not in mask.headers


def test_a_calibration_waits_out_an_outage_and_succeeds(
    database: tuple[str, postgres.Control], tiny_model_dir: Path, tmp_path: Path
) -> None:
    url, control = database
    settings = Settings(
        model_dir=tiny_model_dir,
        state_dir=tmp_path / "state",
        tile_size=64,
        database_url=SecretStr(url),
    )
    with TestClient(create_app(settings)) as client:
        store: ThresholdStore = client.app.state.services.store  # type: ignore[attr-defined]
        dataset = make_zip(dataset_files(16, 128))
        started = client.post(
            f"{BASE}/calibrations", files={"dataset": ("d.zip", dataset, "application/zip")}
        )
        assert started.status_code == 202, started.text
        control.stop()
        stopped = datetime.now(UTC)
        until(lambda: store.outage.failing, "the job never met the outage")
        control.start()

        def job_now() -> dict[str, Any]:
            answer = client.get(started.headers["location"])  # 503s until the store recovers
            return answer.json() if answer.status_code == 200 else {"status": answer.status_code}

        job = wait_for_calibration(job_now)
        assert (job["status"], job["error"]) == ("succeeded", None)
        assert datetime.fromisoformat(job["finished"]) > stopped  # it ran into the outage
        assert client.get(f"{BASE}/threshold").json()["calibration_id"] == job["id"]
