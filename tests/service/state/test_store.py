"""The threshold store: persistence, transactions, digests, job life cycle."""

from __future__ import annotations

import logging
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import text

from service.state.store import (
    ActivationError,
    CalibrationNotFound,
    InvalidTransition,
    StoreError,
    ThresholdStore,
    new_id,
)
from tests.helpers import trace_sql

ROOT = Path(__file__).resolve().parents[3]
DIGEST = "a" * 64
OTHER = "b" * 64


@pytest.fixture
def store(store_location: Path | str) -> ThresholdStore:
    """A new store, once on SQLite and once on PostgreSQL."""
    return ThresholdStore(store_location)


def succeeded(store: ThresholdStore, threshold: float, digest: str = DIGEST, **kw: bool) -> str:
    """A calibration of unet-sigmoid that ran to completion."""
    cid = store.create_calibration("unet-sigmoid", digest, "youden", None, {"seed": 1}, False)
    store.mark_running(cid)
    store.finish_calibration(cid, {"threshold": threshold}, threshold, 0.97, **kw)
    return cid


def test_creates_folder_and_starts_with_no_threshold(store: ThresholdStore) -> None:
    assert store.path is None or store.path.exists()
    assert store.active_threshold("unet-sigmoid", DIGEST) is None
    assert store.list_calibrations("unet-sigmoid") == []
    assert store.history("unet-sigmoid") == []


def test_everything_survives_reopening(store_location: Path | str) -> None:
    first = ThresholdStore(store_location)
    cid = succeeded(first, 0.42, activate=True)
    first.set_manual("unet-relu", OTHER, 1.5, actor="alice")
    first.close()

    again = ThresholdStore(store_location)
    active = again.active_threshold("unet-sigmoid", DIGEST)
    assert active is not None
    assert (active.value, active.source, active.calibration_id) == (0.42, "calibration", cid)
    relu = again.active_threshold("unet-relu", OTHER)
    assert relu is not None and (relu.value, relu.source) == (1.5, "manual")
    record = again.get_calibration("unet-sigmoid", cid)
    assert record is not None and record.report == {"threshold": 0.42}
    assert record.params == {"seed": 1} and record.status == "succeeded"
    assert [c.id for c in again.list_calibrations("unet-sigmoid")] == [cid]


def test_calibration_life_cycle(store: ThresholdStore) -> None:
    cid = store.create_calibration("unet-sigmoid", DIGEST, "target_tpr", 0.9, {}, True)
    assert store.list_calibrations("unet-sigmoid")[0].status == "queued"
    store.mark_running(cid)
    store.set_progress(cid, 0.5)
    running = store.get_calibration("unet-sigmoid", cid)
    assert running is not None
    assert (running.status, running.progress, running.target) == ("running", 0.5, 0.9)
    assert running.started is not None and running.finished is None

    active = store.finish_calibration(cid, {"auc": 0.97}, 0.3, 0.97)
    assert active is not None and active.value == 0.3  # activate=True was recorded at creation
    done = store.get_calibration("unet-sigmoid", cid)
    assert done is not None
    assert (done.status, done.progress, done.threshold, done.auc) == ("succeeded", 1.0, 0.3, 0.97)
    store.set_progress(cid, 0.1)  # a late progress report changes nothing
    assert store.list_calibrations("unet-sigmoid")[0].progress == 1.0
    with pytest.raises(InvalidTransition):
        store.fail_calibration(cid, "too late")


def test_list_is_newest_first_and_without_reports(store: ThresholdStore) -> None:
    ids = [succeeded(store, t) for t in (0.2, 0.4, 0.6)]
    listed = store.list_calibrations("unet-sigmoid")
    assert [c.id for c in listed] == ids[::-1]
    assert all(c.report is None for c in listed)
    assert store.list_calibrations("unet-relu") == []
    assert store.get_calibration("unet-relu", ids[0]) is None  # ids are scoped to their model


def test_ids_are_unique_and_sortable_by_time() -> None:
    ids = [new_id() for _ in range(1000)]
    assert len(set(ids)) == 1000 and all(len(i) == 32 for i in ids)
    assert [i[:12] for i in ids] == sorted(i[:12] for i in ids)


def test_failed_and_interrupted_jobs(store: ThresholdStore) -> None:
    failed = store.create_calibration("unet-sigmoid", DIGEST, "youden", None, {}, True)
    store.fail_calibration(failed, "masks/0003.png: no matching image")
    queued = store.create_calibration("unet-sigmoid", DIGEST, "youden", None, {}, True)
    running = store.create_calibration("unet-sigmoid", DIGEST, "youden", None, {}, True)
    store.mark_running(running)
    done = succeeded(store, 0.5)

    assert store.fail_interrupted("the service restarted") == 0  # its own live jobs
    restarted = ThresholdStore(store.location)  # the same pid, a new life: those jobs are gone
    assert restarted.fail_interrupted("the service restarted") == 2
    status = {c.id: (c.status, c.error) for c in store.list_calibrations("unet-sigmoid")}
    assert status[failed] == ("failed", "masks/0003.png: no matching image")
    assert status[queued] == status[running] == ("failed", "the service restarted")
    assert status[done] == ("succeeded", None)
    assert store.active_threshold("unet-sigmoid", DIGEST) is None
    with pytest.raises(InvalidTransition):
        store.finish_calibration(running, {}, 0.5, 0.9)
    with pytest.raises(CalibrationNotFound):
        store.mark_running("nope")


def test_finish_without_activation_keeps_the_active_threshold(store: ThresholdStore) -> None:
    store.set_manual("unet-sigmoid", DIGEST, 0.7)
    cid = succeeded(store, 0.3, activate=False)
    active = store.active_threshold("unet-sigmoid", DIGEST)
    assert active is not None and (active.value, active.source) == (0.7, "manual")

    activated = store.activate_calibration("unet-sigmoid", DIGEST, cid, actor="bob")
    assert (activated.value, activated.source, activated.calibration_id) == (
        0.3,
        "calibration",
        cid,
    )
    assert store.active_threshold("unet-sigmoid", DIGEST) == activated


def test_activation_errors(store: ThresholdStore) -> None:
    queued = store.create_calibration("unet-sigmoid", DIGEST, "youden", None, {}, True)
    with pytest.raises(ActivationError, match="queued"):
        store.activate_calibration("unet-sigmoid", DIGEST, queued)
    store.fail_calibration(queued, "boom")
    with pytest.raises(ActivationError, match="failed"):
        store.activate_calibration("unet-sigmoid", DIGEST, queued)
    old = succeeded(store, 0.3, digest=OTHER)
    with pytest.raises(ActivationError, match="digest"):
        store.activate_calibration("unet-sigmoid", DIGEST, old)
    with pytest.raises(CalibrationNotFound):
        store.activate_calibration("unet-relu", OTHER, old)
    with pytest.raises(CalibrationNotFound):
        store.activate_calibration("unet-sigmoid", DIGEST, "0" * 32)
    assert store.active_threshold("unet-sigmoid", DIGEST) is None


def test_threshold_of_another_checkpoint_never_applies(
    store: ThresholdStore, caplog: pytest.LogCaptureFixture
) -> None:
    store.set_manual("unet-sigmoid", OTHER, 0.8)
    assert store.active_threshold("unet-sigmoid", DIGEST) is None
    assert not store.note_checkpoint("unet-sigmoid", OTHER)  # its own threshold: nothing to say
    with caplog.at_level(logging.WARNING, logger="service.state.store"):
        assert store.note_checkpoint("unet-sigmoid", DIGEST)
    assert len([r for r in caplog.records if "checkpoint changed" in r.getMessage()]) == 1
    note = store.history("unet-sigmoid")[0]
    assert (note.digest, note.value, note.source) == (DIGEST, None, "default")
    assert note.previous_value == 0.8 and note.reason and "checkpoint changed" in note.reason
    # The next start-up notes it again in the log but not twice in the audit trail.
    assert ThresholdStore(store.location).note_checkpoint("unet-sigmoid", DIGEST)
    assert len(store.history("unet-sigmoid")) == 2
    assert store.active_threshold("unet-sigmoid", DIGEST) is None

    # The old checkpoint's threshold comes back with the old checkpoint.
    back = store.active_threshold("unet-sigmoid", OTHER)
    assert back is not None and back.value == 0.8


def test_a_read_never_writes(store_location: Path | str, monkeypatch: pytest.MonkeyPatch) -> None:
    statements = trace_sql(monkeypatch)
    store = ThresholdStore(store_location)
    store.set_manual("unet-sigmoid", OTHER, 0.8)  # a threshold the read below must ignore
    statements.clear()
    assert store.active_threshold("unet-sigmoid", DIGEST) is None
    assert store.history("unet-sigmoid")[0].source == "manual"
    store.list_calibrations("unet-sigmoid")
    assert [sql for _, sql in statements if not sql.lstrip().upper().startswith("SELECT")] == []
    assert len(store.history("unet-sigmoid")) == 1


def test_only_threshold_changes_send_reads_back_to_the_database(
    store_location: Path | str, monkeypatch: pytest.MonkeyPatch
) -> None:
    statements = trace_sql(monkeypatch)
    # No other process writes here: the version check must not be what sends a read back.
    store = ThresholdStore(store_location, recheck_s=3600)
    model = "unet-sigmoid"

    def went_to_sqlite() -> bool:
        """Whether reading the active threshold queried SQLite rather than memory."""
        before = len(statements)
        store.active_threshold(model, DIGEST)
        return any("FROM active_thresholds" in sql for _, sql in statements[before:])

    assert went_to_sqlite()
    # A calibration's whole life without activation, progress ticks included: memory answers.
    cid = store.create_calibration(model, DIGEST, "youden", None, {}, False)
    store.mark_running(cid)
    for tick in (0.1, 0.2, 0.3):
        store.set_progress(cid, tick)
        assert not went_to_sqlite()
    store.finish_calibration(cid, {}, 0.4, 0.9)
    failed = store.create_calibration(model, DIGEST, "youden", None, {}, True)
    store.fail_calibration(failed, "boom")
    store.fail_interrupted("restart")
    assert not went_to_sqlite()
    # Every threshold change is read back once, then memory answers again.
    changes = [
        lambda: store.set_manual(model, DIGEST, 0.3),
        lambda: store.activate_calibration(model, DIGEST, cid),
        lambda: store.reset_to_default(model, DIGEST),
        lambda: succeeded(store, 0.6, activate=True),
    ]
    for change in changes:
        change()
        assert went_to_sqlite()
        assert not went_to_sqlite()
    assert store.active_threshold(model, DIGEST).value == 0.6  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_async_reads_answer_from_memory_or_a_worker_thread(
    store_location: Path | str, monkeypatch: pytest.MonkeyPatch
) -> None:
    statements = trace_sql(monkeypatch)
    store = ThresholdStore(store_location, recheck_s=3600)
    store.set_manual("unet-sigmoid", DIGEST, 0.3)
    statements.clear()
    loop_thread = threading.get_ident()
    first = await store.active_threshold_async("unet-sigmoid", DIGEST)
    assert first is not None and first.value == 0.3
    assert statements and all(thread != loop_thread for thread, _ in statements)
    statements.clear()
    assert await store.active_threshold_async("unet-sigmoid", DIGEST) == first
    assert statements == []  # from memory


def test_history_records_every_change(store: ThresholdStore) -> None:
    store.set_manual("unet-sigmoid", DIGEST, 0.6, actor="alice")
    cid = succeeded(store, 0.35, activate=True)
    assert store.reset_to_default("unet-sigmoid", DIGEST, actor="carol")
    assert not store.reset_to_default("unet-sigmoid", DIGEST)
    changes = store.history("unet-sigmoid")
    assert [(c.value, c.source, c.previous_value, c.previous_source) for c in changes] == [
        (None, "default", 0.35, "calibration"),
        (0.35, "calibration", 0.6, "manual"),
        (0.6, "manual", None, "default"),
    ]
    assert [c.actor for c in changes] == ["carol", None, "alice"]
    assert changes[1].calibration_id == cid
    assert changes[0].at >= changes[1].at >= changes[2].at
    assert store.active_threshold("unet-sigmoid", DIGEST) is None


def test_rejects_non_finite_values(store: ThresholdStore) -> None:
    with pytest.raises(ValueError, match="finite"):
        store.set_manual("unet-sigmoid", DIGEST, float("nan"))
    assert store.history("unet-sigmoid") == []


def test_reports_with_numpy_values_are_stored(store: ThresholdStore) -> None:
    cid = store.create_calibration("m", DIGEST, "f1", None, {"size": np.int64(3)}, False)
    store.finish_calibration(cid, {"fpr": np.linspace(0, 1, 3), "auc": np.float32(0.5)}, 0.5, None)
    record = store.get_calibration("m", cid)
    assert record is not None and record.report == {"fpr": [0.0, 0.5, 1.0], "auc": 0.5}
    assert record.params == {"size": 3} and record.auc is None


def test_concurrent_writers_and_readers(store: ThresholdStore) -> None:
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(20):
                store.set_manual("unet-sigmoid", DIGEST, n + i / 100)
                assert store.active_threshold("unet-sigmoid", DIGEST) is not None
        except BaseException as error:  # surfaced by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(store.history("unet-sigmoid")) == 80


def test_reads_follow_every_write_in_this_process(store: ThresholdStore) -> None:
    """The in-memory copy of the active threshold never outlives a write."""
    model = "unet-sigmoid"
    assert store.active_threshold(model, DIGEST) is None
    assert store.active_threshold(model, DIGEST) is None  # now answered from memory
    store.set_manual(model, DIGEST, 0.3)
    assert store.active_threshold(model, DIGEST).value == 0.3  # type: ignore[union-attr]
    cid = succeeded(store, 0.7, activate=True)
    active = store.active_threshold(model, DIGEST)
    assert active is not None and (active.value, active.calibration_id) == (0.7, cid)
    with pytest.raises(CalibrationNotFound):
        store.activate_calibration(model, DIGEST, "no-such-calibration")
    assert store.active_threshold(model, DIGEST) == active  # a failed write changes nothing
    assert store.reset_to_default(model, DIGEST)
    assert store.active_threshold(model, DIGEST) is None
    # What memory answers is what the file holds.
    store.set_manual(model, DIGEST, 0.45)
    cached = store.active_threshold(model, DIGEST)
    assert cached == ThresholdStore(store.location).active_threshold(model, DIGEST)


def test_readers_racing_a_writer_end_on_the_last_write(store: ThresholdStore) -> None:
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            store.active_threshold("unet-sigmoid", DIGEST)

    readers = [threading.Thread(target=read) for _ in range(3)]
    for reader in readers:
        reader.start()
    try:
        for i in range(50):
            store.set_manual("unet-sigmoid", DIGEST, i / 100)
            active = store.active_threshold("unet-sigmoid", DIGEST)
            assert active is not None and active.value == i / 100
    finally:
        stop.set()
        for reader in readers:
            reader.join()
    assert store.active_threshold("unet-sigmoid", DIGEST).value == 0.49  # type: ignore[union-attr]


def test_newer_schema_is_refused(store_location: Path | str) -> None:
    first = ThresholdStore(store_location)
    with first.engine.begin() as db:
        db.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    first.close()
    with pytest.raises(StoreError, match="newer version"):
        ThresholdStore(store_location)


WRITER = """
import sys
from pathlib import Path
from service.state.store import ThresholdStore

where = sys.argv[1]
store = ThresholdStore(where if "://" in where else Path(where))
i = 0
while True:
    i += 1
    store.set_manual("unet-sigmoid", "d" * 64, float(i))
    print(i, flush=True)
"""


def test_kill_mid_write_keeps_a_committed_threshold(store_location: Path | str) -> None:
    writer = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(WRITER), str(store_location)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert writer.stdout is not None
    try:
        for _ in range(30):  # let it commit a few times, then kill it mid-loop
            last = int(writer.stdout.readline())
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=10)
        writer.stdout.close()
    assert writer.returncode == -signal.SIGKILL

    store = ThresholdStore(store_location)
    if isinstance(store_location, Path):
        with sqlite3.connect(store_location) as db:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    active = store.active_threshold("unet-sigmoid", "d" * 64)
    assert active is not None
    # Every printed value was committed; the writer may have committed more before the kill.
    assert active.value >= last and active.value.is_integer()
    changes = store.history("unet-sigmoid")
    # Threshold and audit entry share a transaction: one entry per committed value, none torn.
    assert changes[0].value == active.value
    assert len(changes) == int(active.value)
