"""Calibration data sets uploaded as zips, checked and extracted without trusting a byte of them.

A zip is hostile until proven otherwise: its entry names may climb out of the extraction folder
(`../x`, `/etc/x`, `C:\\x`), its entries may be symlinks or devices, its declared sizes may lie and
its data may expand a thousand-fold. Names, types, entry count and declared sizes are checked
against the central directory before a byte is written; while extracting, the bytes are counted
again, so neither a forged header nor a bomb gets past the limits. Only the image files of
`images/` and `masks/` are written, at paths built from checked name parts, never from the raw name.
Compression nested inside an image (a TIFF strip that inflates to gigabytes) is checked after
extraction, streaming, before the data set is accepted.
"""

from __future__ import annotations

import io
import re
import stat
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from model.data.classes import iter_class_pairs
from model.data.datasets import EXTENSIONS, find_pairs
from model.data.decoding import check_image, read_labels
from model.errors import DatasetError, ImageTooLargeError
from service.calibration.errors import DatasetRejected, Rejection
from service.settings import Settings

DATA_DIRS = ("images", "masks")
CHUNK = 1 << 20
MAX_NAME_BYTES = 1024  # a whole entry name
MAX_PART_BYTES = 255  # one path component: what common file systems allow
_DRIVE = re.compile(r"^[A-Za-z]:")
_JUNK_DIRS = ("__MACOSX",)  # macOS Finder's resource forks, next to the real files


@dataclass(frozen=True)
class Dataset:
    """An extracted, structurally valid data set: its folder and its (image, mask) pairs."""

    root: Path
    pairs: list[tuple[Path, Path]]


def extract_dataset(
    data: bytes, dest: Path, settings: Settings, classes: ClassSpec | None = None
) -> Dataset:
    """Check the zip in `data` and extract its `images/` and `masks/` into the empty folder `dest`.

    The two folders may sit at the zip's top level or under one top-level folder. Every problem is
    a DatasetRejected whose message names the entry and what to fix. `classes`: a multi-class
    model's, whose masks are label images (multiclass) or `masks/<class>/` folders (multilabel).
    """
    multilabel = classes is not None and classes.mode == "multilabel"
    with _open(data) as archive:
        infos = archive.infolist()
        _check_counts(infos, settings)
        entries = [(info, _safe_parts(info)) for info in infos]
        prefix = _data_prefix([parts for info, parts in entries if not info.is_dir()])
        selected = _select(entries, prefix, multilabel)
        budget = settings.max_zip_uncompressed_bytes
        for info, parts in selected:
            budget -= _extract(archive, info, dest.joinpath(*parts), budget, settings)
    root = dest.joinpath(*prefix)
    if classes is not None:
        return _class_dataset(root, dest, classes, settings)
    try:
        pairs = find_pairs(root)
    except DatasetError as error:
        raise _invalid(relative(str(error), dest)) from None
    check_image_sizes((path for pair in pairs for path in pair), settings.max_image_pixels, dest)
    return Dataset(root, pairs)


@dataclass(frozen=True)
class ClassSpec:
    """What a multi-class model's calibration set must hold: its mode and class names."""

    mode: str  # multilabel or multiclass
    names: tuple[str, ...]


def _class_dataset(root: Path, dest: Path, classes: ClassSpec, settings: Settings) -> Dataset:
    """A multi-class set, every label image and class mask read once now: what does not fit the
    model's classes is refused before a job is queued. Pairs are (image, its target's place)."""
    masks = sorted(p for p in (root / "masks").rglob("*") if p.is_file())
    images = _images(root) if (root / "images").is_dir() else []
    check_image_sizes([*images, *masks], settings.max_image_pixels, dest)
    try:
        if classes.mode == "multiclass":
            pairs = find_pairs(root)
            for _, labels in pairs:
                read_labels(labels, len(classes.names))
        else:
            pairs = [(image, root / "masks") for image in images]
            # Read through once: every class folder and mask is checked before the job queues.
            for _ in iter_class_pairs(root, classes.names, classes.mode):
                pass
    except DatasetError as error:
        raise _invalid(relative(str(error), dest)) from None
    return Dataset(root, pairs)


def _images(root: Path) -> list[Path]:
    folder = root / "images"
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in EXTENSIONS)


def relative(message: str, folder: Path) -> str:
    """`message` with the extraction folder cut from its paths, so they read as paths in the zip."""
    return message.replace(f"{folder}/", "").replace(str(folder), "the zip")


def check_image_sizes(paths: Iterable[Path], max_pixels: int, folder: Path) -> None:
    """DatasetRejected for an image over the pixel or decoded-byte limit, unreadable, or whose
    compressed TIFF strips or tiles inflate past the size its header declares.

    Decodes nothing: a small compressed file must not be decoded to learn it is too large, and a
    strip is inflated in counted pieces that are dropped at once.
    """
    for path in paths:
        try:
            check_image(path, max_pixels)
        except ImageTooLargeError as error:
            raise _too_large_image(
                f"{relative(str(error), folder)} (limits follow UNET_MAX_IMAGE_PIXELS)"
            ) from None
        except DatasetError as error:
            raise DatasetRejected(
                Rejection.UNREADABLE_IMAGE, relative(str(error), folder)
            ) from None


def _open(data: bytes) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(io.BytesIO(data))
    except Exception as error:  # zipfile raises many types on bad input; all mean "unreadable"
        raise _unreadable(f"the dataset is not a readable zip file ({_reason(error)})") from None


def _check_counts(infos: list[zipfile.ZipInfo], settings: Settings) -> None:
    if len(infos) > settings.max_zip_entries:
        raise DatasetRejected(
            Rejection.TOO_MANY_ENTRIES,
            f"the zip holds {len(infos)} entries, over the limit of {settings.max_zip_entries} "
            "(UNET_MAX_ZIP_ENTRIES); send fewer files",
        )
    declared = sum(info.file_size for info in infos)
    if declared > settings.max_zip_uncompressed_bytes:
        raise _too_large(
            f"the zip expands to {declared} bytes, over the limit of "
            f"{settings.max_zip_uncompressed_bytes} bytes (UNET_MAX_ZIP_UNCOMPRESSED_BYTES)"
        )


def _safe_parts(info: zipfile.ZipInfo) -> tuple[str, ...]:
    """The entry's path components; DatasetRejected for a name or type not to extract."""
    name = info.filename
    shown = name[:200]
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise _unsafe(f"entry {shown!r} is a symbolic link; zip the files themselves")
    if stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise _unsafe(f"entry {shown!r} is not a regular file or folder")
    if info.flag_bits & 0x1:
        raise _unreadable(f"entry {shown!r} is encrypted; send an unencrypted zip")
    # Windows tools sometimes write backslashes; treat them as the separators they mean.
    unified = name.replace("\\", "/")
    if unified.startswith("/") or _DRIVE.match(unified):
        raise _unsafe(f"entry {shown!r} has an absolute path; zip with relative paths")
    parts = tuple(part for part in unified.split("/") if part not in ("", "."))
    if ".." in parts:
        raise _unsafe(f"entry {shown!r} climbs out of the zip with '..'; remove it")
    too_long = any(len(part.encode()) > MAX_PART_BYTES for part in parts)
    if too_long or len(unified.encode()) > MAX_NAME_BYTES:
        raise _unsafe(f"entry {shown!r} has a name too long to extract; shorten it")
    return parts


def _is_junk(parts: tuple[str, ...]) -> bool:
    return bool(parts) and (parts[0] in _JUNK_DIRS or any(p.startswith(".") for p in parts))


def _data_prefix(files: list[tuple[str, ...]]) -> tuple[str, ...]:
    """() when images/ and masks/ sit at the top, (folder,) when under one top-level folder."""
    files = [parts for parts in files if parts and not _is_junk(parts)]
    if any(len(parts) > 1 and parts[0] in DATA_DIRS for parts in files):
        return ()
    tops = {parts[0] for parts in files}
    if len(tops) == 1 and any(len(parts) > 2 and parts[1] in DATA_DIRS for parts in files):
        return (tops.pop(),)
    found = sorted({"/".join(parts[:2]) + ("/" if len(parts) > 2 else "") for parts in files})
    listing = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
    raise _invalid(
        "the zip holds no images/ and masks/ folders, neither at its top level nor under one "
        f"top-level folder (it holds {listing or 'no files'}); put the images in images/ and "
        "the masks, with the same file names, in masks/"
    )


def _select(
    entries: list[tuple[zipfile.ZipInfo, tuple[str, ...]]],
    prefix: tuple[str, ...],
    class_folders: bool = False,
) -> list[tuple[zipfile.ZipInfo, tuple[str, ...]]]:
    """The image files directly inside images/ and masks/ (with `class_folders`, inside the
    folders of masks/), as (entry, its path's parts)."""
    depth = len(prefix)
    selected: list[tuple[zipfile.ZipInfo, tuple[str, ...]]] = []
    seen: set[tuple[str, ...]] = set()
    for info, parts in entries:
        if info.is_dir() or parts[:depth] != prefix:
            continue
        inside = parts[depth:]
        nested = class_folders and len(inside) == 3 and inside[0] == "masks"
        if len(inside) != 2 and not nested:
            continue
        folder, name = inside[0], inside[-1]
        if folder not in DATA_DIRS or name.startswith(".") or not name.lower().endswith(EXTENSIONS):
            continue
        if nested and inside[1].startswith("."):
            continue
        if inside in seen:
            raise _invalid(f"the zip holds {'/'.join(inside)} twice; keep one")
        seen.add(inside)
        selected.append((info, (*prefix, *inside)))
    missing = [folder for folder in DATA_DIRS if all(p[depth] != folder for _, p in selected)]
    if missing:
        where = "/".join((*prefix, missing[0]))
        raise _invalid(
            f"the zip has no image files in {where}/; add files ending in {', '.join(EXTENSIONS)}"
        )
    return selected


def _extract(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, budget: int, settings: Settings
) -> int:
    """Copy one entry to `target`, counting the bytes; returns how many were written."""
    target.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    try:
        source = archive.open(info)
    except Exception as error:  # unsupported compression, bad local header, ...
        raise _unreadable(f"entry {info.filename!r} cannot be read ({_reason(error)})") from None
    with source, target.open("xb") as sink:
        while True:
            try:
                chunk = source.read(CHUNK)
            except Exception as error:  # corrupt data, bad CRC, truncated entry
                raise _unreadable(
                    f"entry {info.filename!r} is damaged ({_reason(error)}); zip it again"
                ) from None
            if not chunk:
                return written
            written += len(chunk)
            # zipfile stops at the declared size, but the count is the guarantee.
            if written > info.file_size:
                raise _unreadable(
                    f"entry {info.filename!r} holds more data than its header declares"
                )
            if written > budget:
                raise _too_large(
                    "the zip expands to more than the limit of "
                    f"{settings.max_zip_uncompressed_bytes} bytes "
                    "(UNET_MAX_ZIP_UNCOMPRESSED_BYTES)"
                )
            sink.write(chunk)


def _reason(error: Exception) -> str:
    return (str(error).splitlines() or [type(error).__name__])[0][:200] or type(error).__name__


def _unreadable(detail: str) -> DatasetRejected:
    return DatasetRejected(Rejection.UNREADABLE_ZIP, detail)


def _unsafe(detail: str) -> DatasetRejected:
    return DatasetRejected(Rejection.UNSAFE_ENTRY, detail)


def _invalid(detail: str) -> DatasetRejected:
    return DatasetRejected(Rejection.INVALID_DATASET, detail)


def _too_large(detail: str) -> DatasetRejected:
    return DatasetRejected(Rejection.ZIP_TOO_LARGE, detail + "; send a smaller data set")


def _too_large_image(detail: str) -> DatasetRejected:
    return DatasetRejected(Rejection.IMAGE_TOO_LARGE, detail)
