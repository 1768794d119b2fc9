"""`unet state check` and `unet state backup`, run as an operator runs them."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from service.cli import main
from service.state.store import ThresholdStore
from tests.servers import free_port

DIGEST = "d" * 64


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of `unet ARGV`."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_object(out: str) -> dict:
    assert out.count("\n") == 1, "--json prints exactly one JSON object"
    return json.loads(out)


def test_backup_of_a_live_database_is_whole_checked_and_opens(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UNET_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("UNET_DATABASE_URL", raising=False)
    store = ThresholdStore(tmp_path / "state" / "thresholds.sqlite3")
    store.set_manual("m", DIGEST, 0.001)
    backed_up, writes = threading.Event(), [0.001]

    def keep_writing() -> None:  # the service at work while the backup copies
        while not backed_up.is_set():
            writes.append(round(writes[-1] + 0.001, 3))
            store.set_manual("m", DIGEST, writes[-1])

    writer = threading.Thread(target=keep_writing)
    writer.start()
    try:
        code, out, err = run(capsys, "state", "backup", str(tmp_path / "copy.sqlite3"), "--json")
    finally:
        backed_up.set()
        writer.join()
    assert (code, err) == (0, "")
    summary = one_object(out)
    assert summary["backup"] == str(tmp_path / "copy.sqlite3") and summary["integrity"] == "ok"
    assert summary["revision"] == "0003" and summary["bytes"] > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.sqlite3", "state"]

    code, out, err = run(
        capsys, "state", "check", "--file", str(tmp_path / "copy.sqlite3"), "--json"
    )
    assert (code, err) == (0, "")
    assert one_object(out) | {"database": None} == {
        "database": None,
        "backend": "sqlite",
        "sound": True,
        "revision": "0003",
        "problem": None,
    }
    # The copy is a snapshot: one of the values written, with the history that led to it.
    copy = ThresholdStore(tmp_path / "copy.sqlite3")
    active = copy.active_threshold("m", DIGEST)
    assert active is not None and active.source == "manual" and active.value in writes
    history = [change.value for change in copy.history("m")]
    assert history[0] == active.value and len(history) == writes.index(active.value) + 1
    copy.close()
    store.close()


def test_backup_into_a_folder_names_the_file_and_never_overwrites(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    source = tmp_path / "thresholds.sqlite3"
    ThresholdStore(source).close()
    backups = tmp_path / "backups"
    backups.mkdir()
    code, out, _ = run(capsys, "state", "backup", "--file", str(source), str(backups))
    (made,) = backups.iterdir()
    assert code == 0 and made.name.startswith("thresholds-") and f"backup: {made}" in out

    code, out, err = run(capsys, "state", "backup", "--file", str(source), str(made))
    assert (code, out) == (2, "")
    assert (
        err
        == f"unet state backup: error: {made} exists; name a new file or a folder to write into\n"
    )


def test_check_of_a_damaged_file_exits_non_zero_with_the_message(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "thresholds.sqlite3"
    ThresholdStore(path).close()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])

    code, out, err = run(capsys, "state", "check", "--file", str(path))
    assert code == 1 and "sound: False" in out
    (line,) = err.splitlines()
    assert line.startswith(f"unet state check: state database {path} is truncated (")
    assert "restore a backup" in line and "Traceback" not in err

    code, out, err = run(capsys, "state", "check", "--file", str(path), "--json")
    found = one_object(out)
    assert code == 1 and found["sound"] is False and found["problem"] in err

    # A damaged database is not backed up: the copy would be as damaged.
    code, _, err = run(capsys, "state", "backup", "--file", str(path), str(tmp_path / "b.sqlite3"))
    assert code == 2 and "is truncated" in err and not (tmp_path / "b.sqlite3").exists()


def test_check_of_a_missing_file_says_so(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, err = run(capsys, "state", "check", "--file", str(tmp_path / "none.sqlite3"))
    assert (code, out) == (2, "") and "no state database at" in err


def test_postgresql_is_checked_and_backed_up_with_pg_dump(
    capsys: pytest.CaptureFixture[str], postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ThresholdStore(postgres_url).close()
    monkeypatch.setenv("UNET_DATABASE_URL", postgres_url)
    code, out, err = run(capsys, "state", "check", "--json")
    found = one_object(out)
    assert (code, err) == (0, "")
    assert found["backend"] == "postgresql" and found["sound"] and found["revision"] == "0003"

    code, out, err = run(capsys, "state", "backup", "somewhere.sqlite3")
    assert code == 2 and out == "" and "pg_dump" in err


def test_check_of_an_unreachable_postgresql_says_what_to_look_at(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UNET_DATABASE_URL", f"postgresql://u:pw@127.0.0.1:{free_port()}/db")
    code, _, err = run(capsys, "state", "check")
    (line,) = err.splitlines()
    assert code == 1 and "cannot be read (" in line and "pw" not in line
    assert line.endswith("check that the server is up and that UNET_DATABASE_URL names it")
