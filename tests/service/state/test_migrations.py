"""A state folder written by the first release upgrades in place, with nothing lost."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

from service.state.store import ThresholdStore

RELEASE_1 = Path(__file__).parent / "release-1" / "thresholds.sqlite3"
D1, D2 = "1" * 64, "2" * 64


def _rows(path: Path, table: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as db:
        return db.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()


def test_a_release_1_state_folder_upgrades_with_everything_in_it(tmp_path: Path) -> None:
    path = tmp_path / "state" / "thresholds.sqlite3"
    path.parent.mkdir()
    shutil.copy(RELEASE_1, path)
    before = {t: _rows(path, t) for t in ("active_thresholds", "threshold_history")}
    calibrations_before = _rows(path, "calibrations")

    store = ThresholdStore(path)
    # Every row of the first release is there, unchanged, with the class a binary model has ("")
    # after it (schema 0003: thresholds per class).
    assert {t: _rows(path, t) for t in before} == {
        t: [(*row, "") for row in rows] for t, rows in before.items()
    }
    sigmoid = store.active_threshold("unet-sigmoid", D1)
    assert sigmoid is not None and (sigmoid.value, sigmoid.source) == (0.42, "calibration")
    relu = store.active_threshold("unet-relu", D2)
    assert relu is not None and (relu.value, relu.source) == (2.25, "manual")
    assert [(c.value, c.source, c.actor) for c in store.history("unet-relu")] == [
        (2.25, "manual", None),
        (None, "default", "carol"),
        (1.5, "manual", "bob"),
    ]
    sigmoid_history = store.history("unet-sigmoid")
    assert [c.source for c in sigmoid_history] == ["default", "calibration", "manual"]
    assert sigmoid_history[0].reason and "checkpoint changed" in sigmoid_history[0].reason

    calibrations = {
        c.id: c for m in ("unet-sigmoid", "unet-relu") for c in store.list_calibrations(m)
    }
    assert len(calibrations) == len(calibrations_before) == 3
    done = store.get_calibration("unet-sigmoid", sigmoid.calibration_id or "")
    # Its report is a stand-in, not a calibration report: read as none, the row left as it was.
    assert done is not None and done.report is None and done.threshold == 0.42
    assert done.params.published() == {"dataset": "a.zip", "n_images": 4}
    assert done.status == "succeeded"
    failed = [c for c in calibrations.values() if c.error == "masks/0003.png: no matching image"]
    assert len(failed) == 1 and failed[0].status == "failed"
    # The job a killed release-1 process left running is failed with a reason, as it was at
    # that release's next start.
    (left,) = store.list_calibrations("unet-relu")
    assert left.status == "failed" and left.error and "restarted" in left.error
    assert left.finished is not None and left.finished.tzinfo is not None

    # It now works like any new store, and a second opening finds nothing more to do.
    store.set_manual("unet-relu", D2, 3.0)
    store.close()
    again = ThresholdStore(path)
    assert again.active_threshold("unet-relu", D2).value == 3.0  # type: ignore[union-attr]
    assert len(again.history("unet-relu")) == 4
