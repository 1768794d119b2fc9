"""Decoding edge cases: every sample type to finite [0, 1], sizes from headers, byte limits,
compressed data bounded by the size its header declares."""

from __future__ import annotations

import io
import lzma
import re
import time
import tracemalloc
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
from PIL import Image

from model.data.decoding import (
    BYTES_PER_PIXEL,
    ImageHeader,
    check_header,
    check_image,
    image_from_bytes,
    read_header,
    to_unit,
)
from model.data.inflation import tifffile_may_decode
from model.errors import DatasetError, ImageTooLargeError, NonFiniteImageError, OverInflatedError
from tests.hostile.make_corpus import (
    FLOATS,
    INTEGERS,
    GiB,
    MiB,
    inflating_zlib,
    lzw_zeros,
    png_bomb,
    png_chunk,
    png_stream,
    tiff_bomb,
    tiff_inflating,
    tiff_segment,
)


def _tiff(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array)
    return buffer.getvalue()


@pytest.mark.parametrize("dtype", INTEGERS + FLOATS)
def test_the_limits_of_every_sample_type_scale_to_0_and_1(dtype: str) -> None:
    info = np.finfo(dtype) if dtype.startswith("float") else np.iinfo(dtype)
    array = np.array([[info.min, 0, info.max]], dtype=dtype)
    unit = image_from_bytes(_tiff(array))
    assert unit.dtype == np.float32 and np.isfinite(unit).all()
    assert unit[0, 0, 0] == 0 and unit[0, 0, 2] == 1 and 0 <= unit[0, 0, 1] <= 1


@pytest.mark.parametrize("dtype", INTEGERS + FLOATS)
def test_a_constant_image_of_any_type_becomes_zeros_or_its_level(dtype: str) -> None:
    info = np.finfo(dtype) if dtype.startswith("float") else np.iinfo(dtype)
    unit = to_unit(np.full((4, 4), info.max, dtype=dtype))
    assert np.isfinite(unit).all() and unit.min() == unit.max()
    assert unit.max() in (0.0, 1.0)  # 8/16-bit unsigned: full scale; others: no contrast


def test_extreme_floats_scale_like_ordinary_ones() -> None:
    ordinary = np.linspace(-1, 1, 101)
    assert np.allclose(to_unit(ordinary * 1.7e308), to_unit(ordinary), atol=1e-6)
    subnormal = to_unit(np.array([-5e-324, 0.0, 5e-324]))  # the smallest floats there are
    assert subnormal.tolist() == [0.0, 0.5, 1.0]


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_pixels_are_refused_with_their_count(dtype: str, bad: float) -> None:
    array = np.zeros((5, 5), dtype=dtype)
    array[1, :2] = bad
    with pytest.raises(NonFiniteImageError, match=r"x.tif: 2 of 25 pixel values are NaN"):
        image_from_bytes(_tiff(array), name="x.tif")


def test_headers_are_read_without_decoding_the_pixels() -> None:
    bomb = tiff_bomb(9000, 9000, 4, "float64")  # 2.5 GiB decoded
    tracemalloc.start()
    started = time.perf_counter()
    header = read_header(bomb)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert header == ImageHeader(9000, 9000, 9000 * 9000 * 4 * 8)
    assert peak < 16 << 20 and time.perf_counter() - started < 5
    assert read_header(png_bomb(6000, 6000, 1)) == ImageHeader(6000, 6000, 36_000_000)


def test_the_decoded_size_is_bounded_as_well_as_the_pixel_count() -> None:
    limit = 100 * 100
    check_header("ok", ImageHeader(100, 100, limit * BYTES_PER_PIXEL), limit)
    with pytest.raises(ImageTooLargeError, match="pixels"):
        check_header("wide", ImageHeader(101, 100, 1), limit)
    with pytest.raises(ImageTooLargeError, match="decodes to"):
        check_header("deep", ImageHeader(100, 100, limit * BYTES_PER_PIXEL + 1), limit)
    with pytest.raises(ImageTooLargeError, match="decodes to"):
        image_from_bytes(tiff_bomb(512, 512, 4, "float64"), max_pixels=512 * 512)


def _peak_of(action: Callable[[], object]) -> tuple[object, int]:
    """What `action` returned or raised, and the peak of memory it allocated (tracemalloc)."""
    tracemalloc.start()
    try:
        outcome: object = action()
    except Exception as error:  # the outcome under test
        outcome = error
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return outcome, peak


INFLATING = {
    "deflate-strip": lambda: tiff_inflating(1024, GiB),
    "deflate-tiles": lambda: tiff_inflating(1024, GiB, tile=256),
    # FillOrder 2: tifffile reverses every byte's bits before it inflates.
    "deflate-fillorder-2": lambda: tiff_segment(inflating_zlib(GiB), fill_order=2),
    # A small first stream, then the bomb: `lzma.decompress` reads every concatenated stream.
    "lzma-concatenated": lambda: tiff_segment(
        lzma.compress(b"\x00" * 100) + lzma.compress(bytes(64 * MiB)), 34925
    ),
    "packbits": lambda: tiff_segment(b"\x81\x00" * (MiB // 2), 32773),  # 64 MiB from 1 MiB
}


@pytest.mark.parametrize("case", sorted(INFLATING))
def test_compressed_segments_stop_at_their_declared_size(case: str) -> None:
    data = INFLATING[case]()
    assert read_header(data) == ImageHeader(1024, 1024, 1024 * 1024)  # an honest header
    error, peak = _peak_of(lambda: image_from_bytes(data, name="x.tif", max_pixels=1 << 24))
    assert isinstance(error, OverInflatedError), error
    assert re.search(r"x.tif: (strip|tile) 0 inflates to more than the \d+ bytes", str(error))
    assert peak < 16 * MiB  # before the check: the whole inflated segment, 256 MiB to 1 GiB


def test_the_same_check_reads_files_and_inflates_nothing_into_memory(tmp_path: Path) -> None:
    path = tmp_path / "bomb.tif"
    path.write_bytes(tiff_inflating(1024, GiB))
    error, peak = _peak_of(lambda: check_image(path, 1 << 24, name="images/bomb.tif"))
    assert isinstance(error, OverInflatedError) and "images/bomb.tif: strip 0" in str(error)
    assert peak < 8 * MiB


@pytest.mark.parametrize("compression", ["zlib", "lzma", "none"])
@pytest.mark.parametrize("tiled", [False, True])
def test_honest_compressed_tiffs_still_decode(
    compression: str, tiled: bool, tmp_path: Path
) -> None:
    rng = np.random.default_rng(5)
    array = rng.integers(0, 4, (300, 200), dtype=np.uint16) * 1000  # runs for PackBits
    buffer = io.BytesIO()
    layout: dict[str, Any] = {"tile": (64, 64)} if tiled else {"rowsperstrip": 7}
    tifffile.imwrite(
        buffer, array, compression=compression, predictor=compression == "zlib", **layout
    )
    path = tmp_path / "x.tif"
    path.write_bytes(buffer.getvalue())
    check_image(path, 1 << 24)
    assert np.array_equal(image_from_bytes(buffer.getvalue())[0], array / np.float32(65535))


def test_a_bit_reversed_deflate_tiff_still_decodes() -> None:
    array = np.arange(1024 * 1024, dtype=np.uint32).reshape(1024, 1024).astype(np.uint8)
    data = tiff_segment(zlib.compress(array.tobytes()), fill_order=2)
    assert np.array_equal(image_from_bytes(data)[0], array / np.float32(255))


def test_an_honest_packbits_tiff_decodes() -> None:
    # Each row: a literal run of 1, 2, 3, 4, then 1020 fives as seven runs of 128 and one of 124.
    row = bytes([3, 1, 2, 3, 4]) + bytes([129, 5]) * 7 + bytes([257 - 124, 5])
    decoded = image_from_bytes(tiff_segment(row * 1024, 32773))[0] * 255
    assert decoded[:, :4].tolist() == [[1, 2, 3, 4]] * 1024 and (decoded[:, 4:] == 5).all()


def test_packbits_padded_with_no_ops_is_refused_before_it_is_read() -> None:
    # 32 MiB of no-op headers (128) inflate to nothing but cost a Python loop per byte.
    data = tiff_segment(b"\x80" * (32 * MiB), compression=32773, side=256)
    started = time.perf_counter()
    with pytest.raises(OverInflatedError, match=r"strip 0 holds 33554432 bytes, more than"):
        image_from_bytes(data, name="x.tif", max_pixels=1 << 24)
    assert time.perf_counter() - started < 1  # the loop takes seconds


def test_a_large_packbits_strip_is_left_to_pillows_decoder() -> None:
    # tifffile's pure-Python PackBits holds 8 bytes per decoded byte: a 16 MiB strip would cost
    # 128 MiB, so Pillow's C decoder takes it.
    data = tiff_segment(bytes([129, 7]) * 32 * 4096, compression=32773, side=4096)
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        assert not tifffile_may_decode(tif.pages.first)
    image = image_from_bytes(data, max_pixels=1 << 24)
    assert image.shape == (1, 4096, 4096) and np.allclose(image, 7 / 255)


def test_a_png_stops_at_its_declared_rows() -> None:
    # 1 GiB of IDAT behind a 32 x 32 header: Pillow's decoder stops once the rows are full.
    data = png_stream(32, 32, 0, inflating_zlib(GiB))
    image, peak = _peak_of(lambda: image_from_bytes(data, max_pixels=1 << 24))
    assert isinstance(image, np.ndarray) and image.shape == (1, 32, 32) and not image.any()
    assert peak < 4 * MiB


def test_a_png_may_inflate_1_mib_of_text() -> None:
    # Pillow inflates text chunks as the file opens; 60 chunks of 1 MB each are 60 KB on disk.
    text = zlib.compress(b"a" * 1_000_000, 9)
    image = png_stream(32, 32, 0, zlib.compress(bytes(33 * 32)))
    header_end = 8 + 25  # signature, IHDR
    for count, fits in ((1, True), (60, False)):
        chunks = b"".join(png_chunk(b"zTXt", b"k%d\0\0" % n + text) for n in range(count))
        data = image[:header_end] + chunks + image[header_end:]
        outcome, peak = _peak_of(lambda: image_from_bytes(data, name="t.png"))  # noqa: B023
        assert isinstance(outcome, np.ndarray) == fits, outcome
        assert fits or "t.png: not a readable image" in str(outcome)
        assert peak < 4 * MiB  # with Pillow's default limit: 60 MB


def test_only_the_documented_formats_are_opened() -> None:
    # Pillow's other plugins (FITS, SGI, ICNS...) are not read: each is a decoder to attack.
    buffer = io.BytesIO()
    Image.new("L", (8, 8)).save(buffer, "SGI")
    with pytest.raises(DatasetError, match=r"x.sgi: not a readable image"):
        image_from_bytes(buffer.getvalue(), name="x.sgi")


def test_an_lzw_strip_goes_to_libtiff_which_stops_at_the_declared_size() -> None:
    # tifffile would inflate it whole (with imagecodecs) or not at all; Pillow's libtiff fills
    # the 64 KiB strip and reads no further than that.
    data = tiff_segment(lzw_zeros(256 * MiB), compression=5, side=256)
    started = time.perf_counter()
    image = image_from_bytes(data, max_pixels=1 << 24)
    assert image.shape == (1, 256, 256) and not image.any()
    assert time.perf_counter() - started < 1  # inflating 256 MiB takes longer
