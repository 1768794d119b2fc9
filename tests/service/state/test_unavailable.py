"""A store that cannot write says why: a full database or disk, or a read-only state folder.

These run anywhere (no mount needed); tests/service/state/test_state_folder.py does the same with a
real full and a real read-only file system.
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from service.state.errors import StoreFull, StoreReadOnly, unavailable
from service.state.records import JobParams
from service.state.store import ThresholdStore
from service.state.writable import why_read_only


def cap_pages(store: ThresholdStore, pages: int) -> None:
    """SQLite's own cap on every pooled connection: writes past it fail as on a full disk."""

    def on_connect(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.execute(f"PRAGMA max_page_count = {pages}")

    if event.contains(store.engine, "connect", CAPS.get(id(store))):
        event.remove(store.engine, "connect", CAPS.pop(id(store)))
    CAPS[id(store)] = on_connect
    event.listen(store.engine, "connect", on_connect)
    store.engine.dispose()  # connections already pooled would keep the old cap


CAPS: dict[int, Any] = {}


def test_a_full_database_raises_store_full_and_recovers(tmp_path: Path) -> None:
    store = ThresholdStore(tmp_path / "t.sqlite3")
    with store.engine.connect() as db:
        pages = db.exec_driver_sql("PRAGMA page_count").scalar_one()
    cap_pages(store, pages)
    with pytest.raises(StoreFull, match=r"UNET_STATE_DIR .* is full"):
        for n in range(10_000):
            store.set_manual("m", f"digest-{n}", 0.5)
    cap_pages(store, 1073741823)
    store.set_manual("m", "d", 0.25)
    active = store.active_threshold("m", "d")
    assert active is not None and active.value == 0.25
    store.close()


def test_a_read_only_store_reads_what_was_written_and_refuses_writes(tmp_path: Path) -> None:
    writer = ThresholdStore(tmp_path / "t.sqlite3")
    writer.set_manual("m", "d", 0.3)
    writer.close()
    store = ThresholdStore(tmp_path / "t.sqlite3", read_only_because="mounted read-only")
    active = store.active_threshold("m", "d")
    assert active is not None and (active.value, active.source) == (0.3, "manual")
    assert len(store.history("m")) == 1
    for write in (
        lambda: store.set_manual("m", "d", 0.4),
        lambda: store.reset_to_default("m", "d"),
        lambda: store.jobs.new_calibration("m", "d", "youden", None, JobParams(), True),
    ):
        with pytest.raises(StoreReadOnly, match="read-only: mounted read-only; make UNET_STATE"):
            write()
    store.close()


def test_a_read_only_store_without_a_database_has_no_thresholds(tmp_path: Path) -> None:
    store = ThresholdStore(tmp_path / "missing" / "t.sqlite3", read_only_because="no access")
    assert store.active_threshold("m", "d") is None
    assert store.list_calibrations("m") == [] and store.history("m") == []
    with pytest.raises(StoreReadOnly):
        store.set_manual("m", "d", 0.4)
    store.close()
    assert not (tmp_path / "missing").exists()


def test_os_errors_that_mean_full_or_read_only() -> None:
    assert isinstance(unavailable(OSError(errno.ENOSPC, "No space"), "/s"), StoreFull)
    assert isinstance(unavailable(OSError(errno.EDQUOT, "Quota"), "/s"), StoreFull)
    assert isinstance(unavailable(OSError(errno.EROFS, "Read-only"), "/s"), StoreReadOnly)
    assert unavailable(OSError(errno.EIO, "I/O error"), "/s") is None  # a real fault stays one


def test_a_writable_folder_is_not_read_only(tmp_path: Path) -> None:
    assert why_read_only(tmp_path / "state") is None
    assert list((tmp_path / "state").iterdir()) == []  # the probe leaves nothing behind
