"""Decoding edge cases: every sample type to finite [0, 1], sizes from headers, byte limits."""

from __future__ import annotations

import io
import time
import tracemalloc

import numpy as np
import pytest
import tifffile

from model.decoding import (
    BYTES_PER_PIXEL,
    ImageHeader,
    ImageTooLargeError,
    NonFiniteImageError,
    check_header,
    image_from_bytes,
    read_header,
    to_unit,
)
from tests.hostile.make_corpus import FLOATS, INTEGERS, png_bomb, tiff_bomb


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
