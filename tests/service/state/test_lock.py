"""One service process per state folder: a second one refuses to start; a dead one lets go."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from service.state.lock import StateFolderBusy, StateLock

HOLD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from service.state.lock import StateLock
    with StateLock(Path(sys.argv[1])):
        print("held", flush=True)
        time.sleep(600)
    """
)


@pytest.fixture
def settings(tiny_model_dir: Path, tmp_path: Path) -> Settings:
    return Settings(model_dir=tiny_model_dir, state_dir=tmp_path / "state")


def test_a_second_app_on_the_same_folder_refuses_to_start(settings: Settings) -> None:
    with TestClient(create_app(settings)) as first:
        second = TestClient(create_app(settings))
        with pytest.raises(StateFolderBusy, match="in use by another service process"), second:
            pass
        assert first.get("/healthz").status_code == 200  # the first one is unharmed
    with TestClient(create_app(settings)) as later:  # free again once the first has stopped
        assert later.get("/healthz").status_code == 200


def test_a_killed_holder_never_leaves_a_stale_lock(tmp_path: Path) -> None:
    folder = tmp_path / "state"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(StateFolderBusy, match=f"pid {holder.pid}"), StateLock(folder):
            pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    with StateLock(folder) as lock:  # the kernel released it with the process
        assert (folder / "service.lock").read_text().strip() == str(os.getpid())
        assert lock.folder == folder
