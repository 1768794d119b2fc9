"""An empty, truncated or damaged state database is refused before the store opens it.

Real files, damaged the ways disks and operators damage them; the store opened the way the
service opens it (`service.app._open_store`).
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from service.app import _open_store
from service.inference.registry import ModelRegistry
from service.settings import Settings
from service.state.integrity import (
    StateUnsound,
    check_before_opening,
    check_file,
    check_opened,
    prepare_file,
)
from service.state.store import ThresholdStore

RELEASE_1 = Path(__file__).parent / "release-1" / "thresholds.sqlite3"
D1, D2 = "1" * 64, "2" * 64


def stored(folder: Path) -> Path:
    """A state folder's database holding one manual threshold and enough rows for many pages."""
    path = folder / "thresholds.sqlite3"
    store = ThresholdStore(path)
    with store.engine.begin() as db:  # one transaction: many pages without an fsync per row
        for n in range(150):
            db.execute(
                text(
                    "INSERT INTO active_thresholds VALUES (:m, :d, 0.5, 'manual', NULL, 'now', '')"
                ),
                {"m": "m", "d": f"digest-{n:0>200}"},
            )
    store.close()  # the last connection out checkpoints the WAL into the file
    assert path.stat().st_size >= 4096 * 6
    return path


def emptied(path: Path) -> None:
    """0 bytes, as a failed copy or an `> file` leaves it."""
    path.write_bytes(b"")


def truncated(path: Path) -> None:
    """The first half only, as a copy cut short leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def garbage_header(path: Path) -> None:
    """The first 100 bytes overwritten."""
    data = path.read_bytes()
    path.write_bytes(b"\x00garbage" * 12 + data[96:])


def damaged_page(path: Path) -> None:
    """A b-tree page's header overwritten in the middle of the file."""
    data = bytearray(path.read_bytes())
    data[4096 * 3 : 4096 * 3 + 16] = b"\xff" * 16
    path.write_bytes(bytes(data))


DAMAGE = {
    "empty": (emptied, "is empty (0 bytes)"),
    "truncated": (truncated, "is truncated ("),
    "garbage header": (garbage_header, "is not a SQLite database"),
    "damaged page": (damaged_page, "is damaged (quick_check: Page "),
}


@pytest.mark.parametrize("how", DAMAGE)
def test_a_damaged_file_stops_start_up_with_what_is_wrong_and_what_to_do(
    tmp_path: Path, how: str
) -> None:
    path = stored(tmp_path)
    damage, said = DAMAGE[how]
    damage(path)
    before = path.read_bytes()
    with pytest.raises(StateUnsound) as raised:
        check_before_opening(path, start_fresh=False, read_only_because=None)
    message = str(raised.value)
    assert len(message.splitlines()) == 1
    assert message.startswith(f"state database {path} {said}")
    assert "restore a backup" in message and "UNET_STATE_START_FRESH=true" in message
    # Nothing was touched: the operator may still want to rescue it.
    assert path.read_bytes() == before and list(tmp_path.glob("*damaged*")) == []


@pytest.mark.parametrize("how", DAMAGE)
def test_start_fresh_moves_the_damaged_file_aside_and_says_so(
    tmp_path: Path, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = stored(tmp_path)
    DAMAGE[how][0](path)
    before = path.read_bytes()
    (tmp_path / "thresholds.sqlite3-wal").write_bytes(b"left over")
    with caplog.at_level(logging.WARNING, logger="service.state.integrity"):
        prepare_file(path, start_fresh=True, read_only_because=None)
    (aside,) = tmp_path.glob("thresholds.damaged-*.sqlite3")
    assert aside.read_bytes() == before
    # The old WAL went with it: replayed into the new database, it would corrupt it.
    assert (tmp_path / f"{aside.name}-wal").read_bytes() == b"left over"
    assert not (tmp_path / "thresholds.sqlite3-wal").exists()
    (record,) = [r for r in caplog.records if "moved it aside" in r.getMessage()]
    assert str(aside) in record.getMessage() and "UNET_STATE_START_FRESH" in record.getMessage()
    assert check_file(path).problem is None
    store = ThresholdStore(path)
    assert store.active_threshold("m", f"digest-{0:0>200}") is None and store.history("m") == []
    store.close()


def test_a_sound_file_is_left_alone_even_with_start_fresh(tmp_path: Path) -> None:
    path = stored(tmp_path)
    before = path.read_bytes()
    prepare_file(path, start_fresh=True, read_only_because=None)
    assert path.read_bytes() == before and list(tmp_path.glob("*damaged*")) == []


def test_a_new_state_folder_gets_a_whole_empty_database(tmp_path: Path) -> None:
    path = tmp_path / "new" / "thresholds.sqlite3"
    prepare_file(path, start_fresh=False, read_only_because=None)
    # Never 0 bytes, not even before the tables exist: an empty file can only mean damage.
    assert path.stat().st_size > 0 and check_file(path).problem is None
    assert list(path.parent.glob(".*")) == []  # no staging file left behind
    prepare_file(path, start_fresh=False, read_only_because=None)  # a second start: the same
    store = ThresholdStore(path)
    store.set_manual("m", D1, 0.3)
    check_opened(store.engine, path, require_head=True)
    store.close()


def test_an_empty_file_in_a_read_only_folder_stops_start_up_too(tmp_path: Path) -> None:
    path = tmp_path / "thresholds.sqlite3"
    path.write_bytes(b"")
    with pytest.raises(StateUnsound, match=r"is empty .*UNET_STATE_START_FRESH"):
        prepare_file(path, start_fresh=False, read_only_because="mounted read-only")
    with pytest.raises(StateUnsound, match="cannot move it aside: the state folder is read-only"):
        prepare_file(path, start_fresh=True, read_only_because="mounted read-only")
    assert path.exists() and list(tmp_path.glob("*damaged*")) == []


def test_a_release_1_folder_passes_and_upgrades_in_place(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    shutil.copy(RELEASE_1, state / "thresholds.sqlite3")
    assert check_file(state / "thresholds.sqlite3").problem is None
    settings = Settings(state_dir=state)
    store = _open_store(settings, ModelRegistry({}), None)
    relu = store.active_threshold("unet-relu", D2)
    assert relu is not None and (relu.value, relu.source) == (2.25, "manual")
    store.close()
    assert check_file(state / "thresholds.sqlite3", thorough=True).revision == "0003"


def test_a_schema_from_a_newer_release_is_refused_by_name(store_location: Path | str) -> None:
    store = ThresholdStore(store_location)
    with store.engine.begin() as db:
        db.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    store.close()
    with pytest.raises(StateUnsound) as raised:
        check_before_opening(store_location, start_fresh=True, read_only_because=None)
    message = str(raised.value)
    assert "written by a newer version of the service (schema 9999)" in message
    assert "upgrade the service" in message and "secret" not in message
    if isinstance(store_location, Path):  # a newer schema is not damage: never moved aside
        assert list(store_location.parent.glob("*damaged*")) == []


def test_a_table_missing_at_the_current_schema_is_refused(store_location: Path | str) -> None:
    store = ThresholdStore(store_location)
    with store.engine.begin() as db:
        db.execute(text("DROP TABLE state_version"))
    with pytest.raises(StateUnsound, match="lacks the table state_version"):
        check_opened(store.engine, store_location, require_head=True)
    store.close()
    with pytest.raises(StateUnsound, match="lacks the table state_version"):
        check_before_opening(store_location, start_fresh=False, read_only_because=None)


def test_the_open_store_path_refuses_an_empty_file(tmp_path: Path) -> None:
    (tmp_path / "thresholds.sqlite3").write_bytes(b"")
    with pytest.raises(StateUnsound, match="is empty"):
        _open_store(Settings(state_dir=tmp_path), ModelRegistry({}), None)


WRITER = """
import sys
from pathlib import Path
from service.state.store import ThresholdStore

store = ThresholdStore(Path(sys.argv[1]))
for n in range(300):
    store.set_manual("m", f"digest-{n:0>500}", 0.5)  # long keys: the file grows as it goes
    if n % 5 == 0:  # checkpoints move pages (and the header's page count) into the file
        with store.engine.connect() as db:
            db.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    print(n, flush=True)
"""


def test_a_live_database_being_written_is_never_called_damaged(tmp_path: Path) -> None:
    path = tmp_path / "thresholds.sqlite3"
    prepare_file(path, start_fresh=False, read_only_because=None)
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert writer.stdout is not None and writer.stdout.readline().strip() == "0"
    checks = 0
    while writer.poll() is None:
        assert check_file(path).problem is None
        checks += 1
    assert writer.returncode == 0 and checks > 0
    assert check_file(path, thorough=True).problem is None
