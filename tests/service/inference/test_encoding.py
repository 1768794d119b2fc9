"""Response encodings: PNG masks, COCO RLE, .npy and 16-bit PNG score maps, overlays."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from model.data.synth import generate_pair
from service.inference.encoding import (
    coco_rle,
    mask_png,
    outline,
    overlay_png,
    probabilities_npy,
    probabilities_png16,
    rle_decode,
)


def read_png(data: bytes) -> tuple[str, np.ndarray]:
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        return image.mode, np.asarray(image)


def brute_force_rle(mask: np.ndarray) -> list[int]:
    """Walk the pixels column by column, counting runs; the first run is background."""
    counts, current, run = [], False, 0
    for x in range(mask.shape[1]):
        for y in range(mask.shape[0]):
            if bool(mask[y, x]) != current:
                counts.append(run)
                current, run = not current, 0
            run += 1
    counts.append(run)
    return counts


def test_mask_png_is_8_bit_0_or_255() -> None:
    mask = np.array([[True, False, True], [False, False, True]])
    mode, pixels = read_png(mask_png(mask))
    assert mode == "L" and pixels.dtype == np.uint8
    np.testing.assert_array_equal(pixels, mask * 255)


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (9, 1), (256, 256), (37, 1001)])
def test_mask_png_round_trips_through_pillow(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(shape))
    # Blobs and noise: rows that repeat the one above and rows that do not.
    mask = rng.random(shape) < 0.3
    mask[: shape[0] // 2] = np.repeat(rng.random((1, shape[1])) < 0.5, shape[0] // 2, axis=0)
    data = mask_png(mask)
    with Image.open(io.BytesIO(data)) as image:
        image.verify()  # chunk CRCs and structure
    mode, pixels = read_png(data)
    assert mode == "L" and pixels.shape == shape
    np.testing.assert_array_equal(pixels, mask * np.uint8(255))


def test_mask_png_compresses_about_as_well_as_pillow() -> None:
    blocks = np.kron(np.random.default_rng(0).random((64, 64)) < 0.4, np.ones((32, 32), bool))
    _, cells = generate_pair(np.random.default_rng(0), 1024)
    for mask in (blocks, cells.astype(bool)):
        buffer = io.BytesIO()
        Image.fromarray(mask * np.uint8(255)).save(buffer, format="PNG", compress_level=1)
        assert len(mask_png(mask)) <= 1.1 * len(buffer.getvalue())


def test_mask_png_refuses_an_empty_mask() -> None:
    with pytest.raises(ValueError, match="at least one pixel"):
        mask_png(np.zeros((0, 4), dtype=bool))


@pytest.mark.parametrize(
    ("mask", "counts"),
    [
        ([[0, 0], [0, 0]], [4]),
        ([[1, 1], [1, 1]], [0, 4]),
        ([[1]], [0, 1]),
        ([[0]], [1]),
        ([[0, 1], [0, 1]], [2, 2]),  # column-major: the left column comes first
        ([[0, 1], [1, 0]], [1, 2, 1]),
        ([[1, 0, 0, 1]], [0, 1, 2, 1]),
    ],
)
def test_coco_rle_small_cases(mask: list[list[int]], counts: list[int]) -> None:
    array = np.array(mask, dtype=bool)
    rle = coco_rle(array)
    assert rle == {"size": list(array.shape), "counts": counts}
    assert all(type(c) is int for c in rle["counts"])  # JSON-serialisable, not numpy ints
    np.testing.assert_array_equal(rle_decode(rle), array)


@pytest.mark.parametrize("seed", range(5))
def test_coco_rle_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    height, width = rng.integers(1, 40, size=2)
    mask = rng.random((height, width)) < rng.random()
    rle = coco_rle(mask)
    assert rle["counts"] == brute_force_rle(mask)
    assert sum(rle["counts"]) == height * width
    np.testing.assert_array_equal(rle_decode(rle), mask)


def test_rle_decode_rejects_inconsistent_counts() -> None:
    with pytest.raises(ValueError, match="sum"):
        rle_decode({"size": [2, 2], "counts": [1, 2]})


def test_npy_round_trip_is_float32() -> None:
    scores = np.linspace(-3, 40, 12, dtype=np.float64).reshape(3, 4)
    loaded = np.load(io.BytesIO(probabilities_npy(scores)), allow_pickle=False)
    assert loaded.dtype == np.float32 and loaded.shape == (3, 4)
    np.testing.assert_array_equal(loaded, scores.astype(np.float32))


def test_png16_round_trip() -> None:
    p = np.array([[0.0, 1.0, 0.5], [1e-6, 0.999999, 0.25]], dtype=np.float32)
    mode, pixels = read_png(probabilities_png16(p))
    assert mode == "I;16" and pixels.dtype == np.uint16
    np.testing.assert_array_equal(pixels, np.rint(p.astype(np.float64) * 65535))
    np.testing.assert_allclose(pixels / 65535, p, atol=0.5 / 65535 + 1e-7)


def test_png16_rejects_non_finite_values() -> None:
    with pytest.raises(ValueError, match="finite"):
        probabilities_png16(np.array([[np.nan]], dtype=np.float32))


def test_outline_is_the_border_of_the_mask() -> None:
    mask = np.zeros((7, 7), dtype=bool)
    mask[1:6, 1:6] = True
    ring = mask.copy()
    ring[2:5, 2:5] = False
    np.testing.assert_array_equal(outline(mask), ring)
    # An object cut by the image frame is not outlined along the frame.
    edge = np.zeros((4, 4), dtype=bool)
    edge[:, :2] = True
    expected = np.zeros((4, 4), dtype=bool)
    expected[:, 1] = True
    np.testing.assert_array_equal(outline(edge), expected)


@pytest.mark.parametrize("channels", [1, 3])
def test_overlay_tints_and_outlines_the_mask(channels: int) -> None:
    image = np.full((channels, 8, 10), 0.5, dtype=np.float32)
    mask = np.zeros((8, 10), dtype=bool)
    mask[2:7, 3:9] = True
    mode, rgb = read_png(overlay_png(image, mask, color=(255, 0, 0), alpha=0.5))
    assert mode == "RGB" and rgb.shape == (8, 10, 3)
    assert (rgb[~mask] == 128).all()  # untouched outside the mask
    np.testing.assert_array_equal(rgb[2, 3], [255, 0, 0])  # outline: the colour itself
    np.testing.assert_array_equal(rgb[4, 5], [191, 64, 64])  # inside: half grey, half red


def test_overlay_checks_shapes() -> None:
    with pytest.raises(ValueError, match="differ"):
        overlay_png(np.zeros((1, 4, 4)), np.zeros((4, 5), dtype=bool))


def test_outline_width() -> None:
    mask = np.zeros((9, 9), dtype=bool)
    mask[1:8, 1:8] = True
    line = outline(mask, width=2)
    assert line[1:3, 1:8].all() and line[3, 3:6].sum() == 0 and line.sum() == 49 - 9
