"""Reading data sets from real files: formats, layouts, errors that name the file, augmentation."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from model.data.datasets import SegmentationFolder, find_pairs, iter_pairs, load_pair
from model.data.decoding import image_from_bytes, read_image, read_mask
from model.errors import DatasetError, ImageTooLargeError

RNG = np.random.default_rng(0)
GREY = RNG.integers(0, 256, (12, 20), dtype=np.uint8)
RGB = RNG.integers(0, 256, (12, 20, 3), dtype=np.uint8)
GREY16 = RNG.integers(0, 65536, (12, 20), dtype=np.uint16)
MASK = GREY > 128


def _png(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode).save(buffer, "PNG")
    return buffer.getvalue()


def _tiff(array: np.ndarray, **options: object) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array, **options)  # type: ignore[arg-type]
    return buffer.getvalue()


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _dataset(root: Path, stems: list[str], images: list[str] | None = None) -> Path:
    """A data set of grey PNG images and masks (image = 255 exactly where the mask is set)."""
    for i, stem in enumerate(stems):
        mask = np.roll(MASK, i, axis=1)
        _write(root / "images" / f"{stem}.png", _png(mask.astype(np.uint8) * 255))
        _write(root / "masks" / f"{stem}.png", _png(mask.astype(np.uint8) * 255))
    for name in images or []:
        _write(root / "images" / name, _png(GREY))
    return root


# Formats and layouts.


def test_grey_png_is_scaled_to_unit_range(tmp_path: Path) -> None:
    image = read_image(_write(tmp_path / "a.png", _png(GREY)))
    assert image.dtype == np.float32 and image.shape == (1, 12, 20)
    np.testing.assert_allclose(image[0], GREY / 255, atol=1e-6)


def test_rgb_becomes_bt601_luminance_or_stays_rgb(tmp_path: Path) -> None:
    path = _write(tmp_path / "rgb.png", _png(RGB))
    grey, colour = read_image(path, 1), read_image(path, 3)
    expected = (RGB @ np.array([0.299, 0.587, 0.114])) / 255
    np.testing.assert_allclose(grey[0], expected, atol=1e-5)
    np.testing.assert_allclose(colour, np.moveaxis(RGB, -1, 0) / 255, atol=1e-6)


def test_grey_is_replicated_for_three_channels(tmp_path: Path) -> None:
    image = read_image(_write(tmp_path / "a.png", _png(GREY)), channels=3)
    assert image.shape == (3, 12, 20)
    assert np.array_equal(image[0], image[2])


def test_rgba_drops_alpha(tmp_path: Path) -> None:
    rgba = np.dstack([RGB, np.zeros((12, 20), np.uint8)])  # fully transparent: alpha is ignored
    image = read_image(_write(tmp_path / "rgba.png", _png(rgba)), channels=3)
    np.testing.assert_allclose(image, np.moveaxis(RGB, -1, 0) / 255, atol=1e-6)


def test_palette_png_and_gif_use_their_colours(tmp_path: Path) -> None:
    palette = Image.fromarray(RGB).quantize(16)
    expected = np.moveaxis(np.asarray(palette.convert("RGB")), -1, 0) / 255
    for suffix in ("png", "gif"):
        palette.save(tmp_path / f"p.{suffix}")
        image = read_image(tmp_path / f"p.{suffix}", channels=3)
        np.testing.assert_allclose(image, expected, atol=1e-6)


def test_jpeg_and_bmp(tmp_path: Path) -> None:
    rows, cols = np.mgrid[0:120:10, 0:200:10]
    smooth = np.dstack([rows, cols, np.full_like(rows, 90)]).astype(np.uint8)
    Image.fromarray(smooth).save(tmp_path / "a.JPG", quality=95)
    Image.fromarray(GREY).save(tmp_path / "b.bmp")
    jpeg = read_image(tmp_path / "a.JPG", channels=3)
    assert jpeg.shape == (3, 12, 20)
    assert np.abs(jpeg - np.moveaxis(smooth, -1, 0) / 255).max() < 0.05  # lossy
    np.testing.assert_allclose(read_image(tmp_path / "b.bmp")[0], GREY / 255, atol=1e-6)


def test_16_bit_png_and_tiff_are_scaled_by_65535(tmp_path: Path) -> None:
    for path in (
        _write(tmp_path / "a.png", _png(GREY16)),
        _write(tmp_path / "a.tif", _tiff(GREY16)),
    ):
        np.testing.assert_allclose(read_image(path)[0], GREY16 / 65535, atol=1e-6)


def test_tiff_layouts_as_microscopes_write_them(tmp_path: Path) -> None:
    stack = np.stack([GREY16, GREY16 // 2, GREY16 // 3, GREY16 // 4])
    multi_page = _write(tmp_path / "stack.tiff", _tiff(stack, photometric="minisblack"))
    np.testing.assert_allclose(read_image(multi_page)[0], GREY16 / 65535, atol=1e-6)

    rgb16 = np.stack([GREY16, GREY16 // 2, GREY16 // 3])
    planar = _write(
        tmp_path / "planar.TIF", _tiff(rgb16, photometric="rgb", planarconfig="separate")
    )
    contiguous = _write(
        tmp_path / "contig.tif", _tiff(np.moveaxis(rgb16, 0, -1), photometric="rgb")
    )
    for path in (planar, contiguous):
        np.testing.assert_allclose(read_image(path, channels=3), rgb16 / 65535, atol=1e-6)


def test_lzw_tiff_falls_back_to_pillow(tmp_path: Path) -> None:
    Image.fromarray(RGB).save(tmp_path / "lzw.tif", compression="tiff_lzw")
    image = read_image(tmp_path / "lzw.tif", channels=3)
    np.testing.assert_allclose(image, np.moveaxis(RGB, -1, 0) / 255, atol=1e-6)


def test_float_tiff_kept_in_unit_range_else_min_max_scaled(tmp_path: Path) -> None:
    unit = (GREY / 255).astype(np.float32)
    kept = read_image(_write(tmp_path / "unit.tif", _tiff(unit)))
    np.testing.assert_allclose(kept[0], unit)
    counts = unit * 4000 + 100
    scaled = read_image(_write(tmp_path / "counts.tif", _tiff(counts)))
    np.testing.assert_allclose(scaled[0], (counts - counts.min()) / np.ptp(counts), atol=1e-6)


def test_masks_any_non_zero_is_foreground(tmp_path: Path) -> None:
    rgb_mask = np.zeros((4, 5, 3), np.uint8)
    rgb_mask[0, 0, 2] = 1
    rgb_mask[1, 1] = 200
    rgba = np.dstack([rgb_mask, np.full((4, 5), 255, np.uint8)])  # opaque alpha is not a label
    for name, data in (("rgb.png", _png(rgb_mask)), ("rgba.png", _png(rgba))):
        mask = read_mask(_write(tmp_path / name, data))
        assert mask.dtype == bool and mask.shape == (4, 5)
        assert np.flatnonzero(mask).tolist() == [0, 6]
    labels = np.array([[0, 3], [1, 0]], np.uint16)
    assert read_mask(_write(tmp_path / "l.tif", _tiff(labels))).tolist() == [[0, 1], [1, 0]]


def test_palette_mask_counts_indices_not_colours(tmp_path: Path) -> None:
    mask = Image.fromarray(np.array([[0, 1], [2, 0]], np.uint8), "P")
    mask.putpalette([255, 255, 255, 0, 0, 0, 9, 9, 9])  # index 0 is white, 1 is black
    mask.save(tmp_path / "p.png")
    assert read_mask(tmp_path / "p.png").tolist() == [[False, True], [True, False]]


# Size limits.


def _png_claiming(width: int, height: int) -> bytes:
    """A 1 x 1 PNG whose header claims another size: only a header check can reject it cleanly."""
    data = bytearray(_png(np.zeros((1, 1), np.uint8)))
    header = b"IHDR" + struct.pack(">II", width, height) + bytes(data[24:29])
    data[12:29] = header
    data[29:33] = struct.pack(">I", zlib.crc32(header))
    return bytes(data)


def test_max_pixels_rejects_before_decoding() -> None:
    with pytest.raises(ImageTooLargeError, match=r"big\.png.*5000 x 4000.*limit of 1000000 pix"):
        image_from_bytes(_png_claiming(5000, 4000), name="big.png", max_pixels=1_000_000)
    assert image_from_bytes(_png(GREY), max_pixels=240).shape == (1, 12, 20)
    with pytest.raises(ImageTooLargeError, match="pixels"):
        image_from_bytes(_png(GREY), max_pixels=239)
    with pytest.raises(ImageTooLargeError, match=r"a\.tif"):
        image_from_bytes(_tiff(GREY16), name="a.tif", max_pixels=100)


def test_decompression_bomb_guard() -> None:
    with pytest.raises(ImageTooLargeError, match=r"bomb\.png.*limit"):
        image_from_bytes(_png_claiming(100_000, 100_000), name="bomb.png")


def test_pillow_pixel_limit_applies_without_max_pixels(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ImageTooLargeError, match="limit"):
        image_from_bytes(_tiff(GREY16), name="a.tif")


# Errors name the file and the fix.


@pytest.mark.parametrize(
    "data",
    [b"", b"not an image at all", _png(GREY)[:60], b"II*\x00" + b"\x00" * 20],
    ids=["empty", "text", "truncated-png", "broken-tiff"],
)
def test_corrupt_image_names_the_file(tmp_path: Path, data: bytes) -> None:
    path = _write(tmp_path / "broken.png", data)
    with pytest.raises(DatasetError, match=r"broken\.png") as error:
        read_image(path)
    assert "\n" not in str(error.value)
    assert not isinstance(error.value, ImageTooLargeError)


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"nope\.png"):
        read_image(tmp_path / "nope.png")


def test_find_pairs_matches_stems_across_extensions(tmp_path: Path) -> None:
    _write(tmp_path / "images" / "b.TIFF", _tiff(GREY16))
    _write(tmp_path / "masks" / "b.png", _png(GREY))
    _write(tmp_path / "images" / "a.jpeg", _png(GREY))
    _write(tmp_path / "masks" / "a.gif", _png(GREY))
    _write(tmp_path / "images" / "notes.txt", b"ignored")
    _write(tmp_path / "images" / ".hidden.png", b"ignored")
    pairs = find_pairs(tmp_path)
    assert [(i.name, m.name) for i, m in pairs] == [("a.jpeg", "a.gif"), ("b.TIFF", "b.png")]


def test_dataset_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"missing.*does not exist"):
        find_pairs(tmp_path / "missing")
    (tmp_path / "images").mkdir()
    with pytest.raises(DatasetError, match=r"has no masks/ folder"):
        find_pairs(tmp_path)
    (tmp_path / "masks").mkdir()
    with pytest.raises(DatasetError, match=r"images: no images found"):
        find_pairs(tmp_path)


def test_images_without_masks_are_named(tmp_path: Path) -> None:
    _dataset(tmp_path, ["a"], images=["x1.png", "x2.png", "x3.png", "x4.png", "x5.png"])
    with pytest.raises(
        DatasetError, match=r"no mask for 5 image\(s\) \(x1.png, x2.png, x3.png and 2"
    ):
        find_pairs(tmp_path)


def test_masks_without_images_are_named(tmp_path: Path) -> None:
    _dataset(tmp_path, ["a"])
    _write(tmp_path / "masks" / "orphan.png", _png(GREY))
    with pytest.raises(DatasetError, match=r"no image for 1 mask\(s\) \(orphan.png\)"):
        find_pairs(tmp_path)


def test_duplicate_stems_are_named(tmp_path: Path) -> None:
    _dataset(tmp_path, ["a"])
    _write(tmp_path / "images" / "a.tif", _tiff(GREY))
    with pytest.raises(DatasetError, match=r"a.png and a.tif share the stem"):
        find_pairs(tmp_path)


def test_size_mismatch_names_both_files_and_sizes(tmp_path: Path) -> None:
    _dataset(tmp_path, ["a", "b"])
    _write(tmp_path / "masks" / "b.png", _png(np.zeros((7, 9), np.uint8)))
    pattern = r"images/b.png is 20 x 12 px but its mask .*masks/b.png is 9 x 7 px"
    with pytest.raises(DatasetError, match=pattern):
        load_pair(tmp_path / "images" / "b.png", tmp_path / "masks" / "b.png")
    with pytest.raises(DatasetError, match=pattern):
        SegmentationFolder(tmp_path)  # checked when built, not at the first batch


def test_folder_with_corrupt_image_fails_when_built(tmp_path: Path) -> None:
    _dataset(tmp_path, ["a", "b"])
    _write(tmp_path / "images" / "b.png", b"garbage")
    with pytest.raises(DatasetError, match=r"images/b.png: not a readable"):
        SegmentationFolder(tmp_path)


# The folder data set.


def test_folder_items_and_iter_pairs(tmp_path: Path) -> None:
    _dataset(tmp_path, ["b", "a", "c"])
    folder = SegmentationFolder(tmp_path, channels=3)
    assert len(folder) == 3 and folder.names == ["a", "b", "c"]
    image, mask = folder[1]
    assert image.dtype == torch.float32 and image.shape == (3, 12, 20)
    assert mask.dtype == torch.float32 and mask.shape == (1, 12, 20)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    triples = iter_pairs(tmp_path)
    name, image_array, mask_array = next(triples)
    assert name == "a.png" and image_array.shape == (1, 12, 20) and mask_array.dtype == bool
    assert [t[0] for t in triples] == ["b.png", "c.png"]


@pytest.mark.parametrize("shape", [(16, 16), (12, 20)])
def test_augmentation_moves_image_and_mask_together(tmp_path: Path, shape: tuple[int, int]) -> None:
    mask = np.zeros(shape, np.uint8)
    mask[1:5, 2:4] = 255  # asymmetric, so every flip and turn looks different
    _write(tmp_path / "images" / "a.png", _png(mask))
    _write(tmp_path / "masks" / "a.png", _png(mask))
    folder = SegmentationFolder(tmp_path, augment=True, seed=3)
    seen = set()
    for _ in range(40):
        image, target = folder[0]
        assert image.shape[1:] == shape  # non-square images are never turned by 90 degrees
        assert torch.equal(image[0] > 0.5, target[0] > 0.5)
        seen.add(target.numpy().tobytes())
    assert len(seen) == (8 if shape[0] == shape[1] else 4)
    plain = SegmentationFolder(tmp_path)
    assert torch.equal(plain[0][1][0], torch.from_numpy(mask > 0).float())
