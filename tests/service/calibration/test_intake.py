"""Uploaded calibration zips: structure, limits and hostile archives (no HTTP)."""

from __future__ import annotations

import stat
import tracemalloc
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.api.errors import problem_for
from service.api.problems import ProblemError
from service.calibration.errors import DatasetRejected
from service.calibration.intake import extract_dataset
from service.settings import Settings
from tests.helpers import dataset_files, make_zip, patch_central, patch_central_size, png
from tests.hostile.make_corpus import inflating_zip

MiB = 1 << 20


def settings(tmp_path: Path, **overrides: Any) -> Settings:
    """Settings with small limits, so that tests reach them cheaply."""
    values: dict[str, Any] = {
        "model_dir": tmp_path,
        "state_dir": tmp_path,
        "max_zip_entries": 50,
        "max_zip_uncompressed_bytes": 4 * MiB,
        "max_image_pixels": 128 * 128,
    }
    return Settings(**{**values, **overrides})


def extract(tmp_path: Path, data: bytes, **overrides: Any) -> Any:
    """Extract into a fresh folder under `tmp_path` (`out`, then `out1`, `out2`, ...)."""
    dest, n = tmp_path / "out", 0
    while dest.exists():
        n += 1
        dest = tmp_path / f"out{n}"
    return extract_dataset(data, dest, settings(tmp_path, **overrides))


def rejected(tmp_path: Path, data: bytes, status: int, **overrides: Any) -> ProblemError:
    """The problem that answers the rejection of `data`; it must have `status`."""
    with pytest.raises(DatasetRejected) as caught:
        extract(tmp_path, data, **overrides)
    problem = problem_for(caught.value)
    assert problem.status == status, problem.detail
    assert problem.detail
    return problem


def files_under(folder: Path) -> list[str]:
    """Every file below `folder`, relative and sorted."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_top_level_folders(tmp_path: Path) -> None:
    dataset = extract(tmp_path, make_zip(dataset_files()))
    assert dataset.root == tmp_path / "out"
    assert [(i.name, m.name) for i, m in dataset.pairs] == [(f"{i:04d}.png",) * 2 for i in range(3)]


def test_one_top_level_folder_and_junk_are_accepted(tmp_path: Path) -> None:
    junk = {"set/README.txt": b"hi", "__MACOSX/set/._x": b"x", "set/images/.DS_Store": b"x"}
    dataset = extract(tmp_path, make_zip({**dataset_files(prefix="set/"), **junk}))
    assert dataset.root == tmp_path / "out" / "set"
    assert len(dataset.pairs) == 3
    # Only the images and masks are written.
    assert all(name.endswith(".png") for name in files_under(tmp_path / "out"))


def test_backslash_names_are_paths(tmp_path: Path) -> None:
    files = {name.replace("/", "\\"): data for name, data in dataset_files(2).items()}
    assert len(extract(tmp_path, make_zip(files)).pairs) == 2


@pytest.mark.parametrize(
    "name",
    ["../evil.png", "images/../../evil.png", "/tmp/evil.png", "C:/evil.png", "..\\evil.png"],
)
def test_names_that_escape_are_refused(tmp_path: Path, name: str) -> None:
    data = make_zip(dataset_files(1), [(zipfile.ZipInfo(name), b"x")])
    problem = rejected(tmp_path, data, 422)
    assert problem.title == "Unsafe zip entry"
    assert not (tmp_path / "evil.png").exists()
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("evil*"))


def test_symlinks_are_refused(tmp_path: Path) -> None:
    link = zipfile.ZipInfo("images/0009.png")
    link.create_system = 3
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    problem = rejected(tmp_path, make_zip(dataset_files(1), [(link, b"/etc/passwd")]), 422)
    assert "symbolic link" in (problem.detail or "")


def test_devices_and_encrypted_entries_are_refused(tmp_path: Path) -> None:
    fifo = zipfile.ZipInfo("images/fifo.png")
    fifo.external_attr = (stat.S_IFIFO | 0o644) << 16
    rejected(tmp_path, make_zip(dataset_files(1), [(fifo, b"")]), 422)
    secret = patch_central(make_zip(dataset_files(1)), "images/0000.png", 8, "<H", 0x1)
    assert "encrypted" in (rejected(tmp_path, secret, 422).detail or "")


def test_too_many_entries(tmp_path: Path) -> None:
    files = {f"images/{i}.txt": b"" for i in range(51)}
    assert rejected(tmp_path, make_zip(files), 413).title == "Zip has too many entries"


def test_bomb_by_compression_ratio(tmp_path: Path) -> None:
    data = make_zip({**dataset_files(1), "images/zeros.tif": bytes(5 * MiB)})
    assert len(data) < 100_000  # about a thousand to one
    assert rejected(tmp_path, data, 413).title == "Zip too large"


def test_bomb_by_declared_size(tmp_path: Path) -> None:
    data = patch_central_size(make_zip(dataset_files(1)), "images/0000.png", 1 << 31)
    rejected(tmp_path, data, 413)


def test_bomb_that_hides_its_size(tmp_path: Path) -> None:
    # Declares 100 bytes, holds a mebibyte: extraction must not trust the header.
    files = {**dataset_files(1), "images/0001.png": bytes(MiB), "masks/0001.png": b"x"}
    data = patch_central_size(make_zip(files), "images/0001.png", 100)
    rejected(tmp_path, data, 422)
    written = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in written) < MiB


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"this is not a zip", "not a readable zip"),
        (b"PK\x03\x04" + bytes(40), "not a readable zip"),
        (b"PK\x05\x06" + bytes(18), "no images/ and masks/"),  # an empty zip
    ],
)
def test_garbage(tmp_path: Path, data: bytes, words: str) -> None:
    assert words in (rejected(tmp_path, data, 422).detail or "")


def test_truncated_zip(tmp_path: Path) -> None:
    data = make_zip(dataset_files(2))
    for cut in (len(data) // 3, len(data) - 10):
        rejected(tmp_path, data[:cut], 422)


def test_damaged_entry(tmp_path: Path) -> None:
    data = bytearray(make_zip(dataset_files(1)))
    start = data.index(b"PK\x03\x04") + 30 + len("images/0000.png")
    data[start + 50 : start + 60] = bytes(10)  # inside the deflated data
    assert "damaged" in (rejected(tmp_path, bytes(data), 422).detail or "")


@pytest.mark.parametrize(
    ("drop", "words"),
    [
        ("masks/0001.png", "no mask for 1 image(s) (0001.png)"),
        ("images/0001.png", "no image for 1 mask(s) (0001.png)"),
    ],
)
def test_unmatched_files(tmp_path: Path, drop: str, words: str) -> None:
    files = dataset_files(2)
    del files[drop]
    detail = rejected(tmp_path, make_zip(files), 422).detail or ""
    assert words in detail
    assert str(tmp_path) not in detail  # paths read as paths in the zip


def test_missing_folders(tmp_path: Path) -> None:
    detail = rejected(tmp_path, make_zip({"data/readme.txt": b"x"}), 422).detail or ""
    assert "no images/ and masks/ folders" in detail and "data/readme.txt" in detail
    only_images = {k: v for k, v in dataset_files(1).items() if k.startswith("images")}
    assert "masks/" in (rejected(tmp_path, make_zip(only_images), 422).detail or "")


def test_duplicate_entries(tmp_path: Path) -> None:
    files = dataset_files(1)
    with pytest.warns(UserWarning, match="Duplicate name"):
        data = make_zip(files, [(zipfile.ZipInfo("images/0000.png"), files["images/0000.png"])])
    assert "twice" in (rejected(tmp_path, data, 422).detail or "")


def test_pixel_limit_and_unreadable_images(tmp_path: Path) -> None:
    big = {"images/a.png": png(np.zeros((200, 200), np.uint8)), "masks/a.png": b"x"}
    detail = rejected(tmp_path, make_zip(big), 413).detail or ""
    assert "images/a.png" in detail and "40000 pixels" in detail
    garbage = {"images/a.png": b"not an image", "masks/a.png": png(np.zeros((8, 8), bool))}
    assert "images/a.png" in (rejected(tmp_path, make_zip(garbage), 422).detail or "")


def test_images_whose_compressed_data_inflates_past_their_header_are_refused(
    tmp_path: Path,
) -> None:
    """Three 1024 x 1024 TIFFs in a 10 KB zip, each strip inflating to 1 GiB: refused, and the
    check holds one 1 MiB piece at a time."""
    data = inflating_zip(3)
    assert len(data) < 16 * 1024
    tracemalloc.start()
    try:
        problem = rejected(tmp_path, data, 422, max_image_pixels=1024 * 1024)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert problem.title == "Unreadable image"
    assert "images/bomb0.tif: strip 0 inflates to more than the 1048576 bytes" in str(
        problem.detail
    )
    assert peak < 24 * MiB  # the zip and its extraction; the strips inflate to 3 GiB


def test_no_input_gives_anything_but_a_4xx(tmp_path: Path) -> None:
    valid = make_zip(dataset_files(2, size=32))
    rng = np.random.default_rng(0)
    for attempt in range(40):
        data = bytearray(valid)
        for at in rng.integers(0, len(data), size=int(rng.integers(1, 8))):
            data[at] = int(rng.integers(256))
        dest = tmp_path / f"fuzz{attempt}"
        try:
            extract_dataset(bytes(data), dest, settings(tmp_path))
        except DatasetRejected as rejection:
            assert 400 <= problem_for(rejection).status < 500
