"""Uploads spool in one known folder; when its disk is full a real server answers 507, not 400.

The folder is a small tmpfs of its own, so filling it fills nothing else; mounting one needs
root, and the tests are skipped where that is not allowed.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.api.spool import spool_folder
from service.settings import Settings
from tests.helpers import TINY_MODEL, dataset_files, fill, make_zip, mounted_tmpfs, png
from tests.servers import ServiceProcess

ENV = {"UNET_LOG_LEVEL": "warning", "UNET_TILE_SIZE": "64"}
MODEL = f"/v1/models/{TINY_MODEL}"
MiB = 1 << 20
READY_S = 180  # starting takes over 30 s while the machine is shared and busy


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """An empty 64 MiB tmpfs, unmounted afterwards (the service may keep temporary files there)."""
    with mounted_tmpfs(tmp_path / "tmpfs", 64) as mount:
        yield mount


def noisy_png(side: int) -> bytes:
    """A `side` x `side` RGB PNG of noise: about 3 x side**2 bytes, as noise does not compress."""
    rng = np.random.default_rng(0)
    return png(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))


def test_a_full_spool_folder_answers_507_and_logs_it(
    tiny_model_dir: Path, small_tmpfs: Path, tmp_path: Path
) -> None:
    """The spool folder is where large uploads go, and only there: TMPDIR has room."""
    spool = small_tmpfs / "spool"
    log = (tmp_path / "service.log").open("w+")
    server = ServiceProcess(
        tiny_model_dir,
        tmp_path / "state",
        {**ENV, "UNET_SPOOL_DIR": str(spool)},
        stderr=log,
        ready_within_s=READY_S,
    )
    try:
        assert spool.is_dir()  # made at start-up
        filler = fill(small_tmpfs, "filler")
        large = noisy_png(1200)  # about 4 MiB: spooled to disk past 1 MiB
        assert len(large) > 4 * MiB
        for path, field, content in [
            ("mask", "image", large),
            ("calibrations", "dataset", make_zip(dataset_files(n=1)) + bytes(12 * MiB)),
        ]:
            answer = httpx.post(
                f"{server.base}{MODEL}/{path}", files={field: ("x", content)}, timeout=60
            )
            assert answer.status_code == 507, answer.text
            assert answer.headers["content-type"] == "application/problem+json"
            problem = answer.json()
            assert problem["type"].endswith("/spool-disk-full")
            assert "UNET_SPOOL_DIR" in problem["detail"]
        small = httpx.post(
            f"{server.base}{MODEL}/mask", files={"image": ("x.png", noisy_png(64))}, timeout=60
        )
        assert small.status_code == 200  # under 1 MiB: held in memory, nothing to spool
        filler.unlink()
        again = httpx.post(
            f"{server.base}{MODEL}/mask", files={"image": ("x.png", large)}, timeout=120
        )
        assert again.status_code == 200, again.text
    finally:
        server.stop()
        log.seek(0)
        said = log.read()
        log.close()
    assert said.count(f"the spool folder {spool} is full") == 2, said


def test_an_unwritable_spool_folder_stops_the_start(tiny_model_dir: Path, tmp_path: Path) -> None:
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    with pytest.raises(AssertionError, match="UNET_SPOOL_DIR"):
        ServiceProcess(
            tiny_model_dir,
            tmp_path / "state",
            {**ENV, "UNET_SPOOL_DIR": str(not_a_folder / "spool")},
            stderr=subprocess.PIPE,
            ready_within_s=READY_S,
        )


def test_the_spool_folder_is_the_setting_else_tmpdir_else_tmp(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Never Python's silent fallback: TMPDIR when set, even if full or missing."""
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmpdir"))
    assert spool_folder(Settings()) == tmp_path / "tmpdir"
    assert spool_folder(Settings(spool_dir=tmp_path / "set")) == tmp_path / "set"
    monkeypatch.delenv("TMPDIR")
    assert spool_folder(Settings()) == Path("/tmp")
