"""The synthetic data set: deterministic, binary masks, and hard enough that Otsu falls short."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model.data.synth import generate_labelled, generate_pair, pair_rng, render, write_dataset
from model.training.otsu import otsu_mask, otsu_threshold


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def test_same_seed_same_bytes_and_image_independent_of_n(tmp_path: Path) -> None:
    write_dataset(tmp_path / "a", n=3, seed=5, size=64)
    write_dataset(tmp_path / "b", n=3, seed=5, size=64)
    write_dataset(tmp_path / "c", n=5, seed=5, size=64)
    a, b, c = (_files(tmp_path / name) for name in "abc")
    assert len(a) == 6
    assert a == b
    assert len(c) == 10
    assert all(c[name] == data for name, data in a.items())


def test_different_seeds_differ(tmp_path: Path) -> None:
    write_dataset(tmp_path / "a", n=2, seed=1, size=64)
    write_dataset(tmp_path / "b", n=2, seed=2, size=64)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert a.keys() == b.keys()
    assert all(a[name] != b[name] for name in a if name.startswith("images"))


def test_written_files_are_8_bit_grey_with_binary_masks(tmp_path: Path) -> None:
    write_dataset(tmp_path, n=4, seed=0, size=96)
    for i in range(4):
        image = Image.open(tmp_path / "images" / f"{i:04d}.png")
        mask = np.asarray(Image.open(tmp_path / "masks" / f"{i:04d}.png"))
        assert image.mode == "L"
        assert image.size == (96, 96)
        assert mask.shape == (96, 96)
        assert set(np.unique(mask)) <= {0, 255}


def test_generate_pair_types_and_sizes() -> None:
    for size in (32, 128, 200):
        image, mask = generate_pair(pair_rng(0, 0), size)
        assert image.dtype == np.uint8 and image.shape == (size, size)
        assert mask.dtype == bool and mask.shape == (size, size)
    with pytest.raises(ValueError, match="size"):
        generate_pair(pair_rng(0, 0), 4)


def test_labels_disagree_with_the_true_outline_only_near_borders() -> None:
    jittered = 0
    for i in range(5):
        _, mask, truth = render(pair_rng(3, i))
        disagree = mask != (truth > 0)
        jittered += int(disagree.sum())
        assert np.abs(truth[disagree]).max() < 4  # pixels, measured along the outline's normal
    assert jittered > 0


def test_otsu_falls_short_on_the_synthetic_set() -> None:
    intersection = total = 0
    fractions = []
    for i in range(24):
        image, mask = generate_pair(pair_rng(11, i))
        predicted = otsu_mask(image)
        intersection += int((predicted & mask).sum())
        total += int(predicted.sum() + mask.sum())
        fractions.append(mask.mean())
    dice = 2 * intersection / total
    assert 0.5 < dice < 0.85
    assert 0.12 < float(np.mean(fractions)) < 0.35


def _brute_force_otsu(image: np.ndarray) -> int:
    best, best_t = -1.0, 0
    for t in range(1, 256):
        low, high = image[image < t].astype(float), image[image >= t].astype(float)
        if low.size and high.size:
            between = low.size * high.size * (low.mean() - high.mean()) ** 2
            if between > best:
                best, best_t = between, t
    return best_t


def test_otsu_threshold_matches_the_definition_on_8_bit() -> None:
    rng = np.random.default_rng(0)
    image = np.concatenate([rng.normal(60, 12, 3000), rng.normal(170, 20, 1000)])
    image = np.clip(image, 0, 255).astype(np.uint8).reshape(40, 100)
    threshold = otsu_threshold(image)
    # Thresholds inside a run of empty bins tie; they all give the same mask.
    assert np.array_equal(otsu_mask(image), image >= _brute_force_otsu(image))
    assert np.array_equal(otsu_mask(image), image >= threshold)
    assert threshold == int(threshold)


def test_otsu_threshold_in_the_units_of_float_and_16_bit_images() -> None:
    rng = np.random.default_rng(1)
    two_modes = np.concatenate([rng.normal(0.2, 0.03, 500), rng.normal(0.7, 0.05, 500)])
    assert 0.3 < otsu_threshold(two_modes) < 0.6
    assert 20000 < otsu_threshold((two_modes * 65535).astype(np.uint16)) < 40000
    assert otsu_threshold(np.full((3, 3), 7.0)) == 7.0
    assert otsu_mask(np.array([[0.0, np.nan], [1.0, 1.0]])).tolist() == [[False, False], [1, 1]]


def _pixels_digest(seed: int, n: int, size: int) -> str:
    digest = hashlib.sha256()
    for i in range(n):
        for array in render(pair_rng(seed, i), size):
            digest.update(array.tobytes())
    return digest.hexdigest()


def test_binary_output_is_what_it_was_before_classes() -> None:
    """Labelling debris draws nothing from the generator: seeded binary pixels stay the same."""
    # Taken from the generator before debris could be labelled.
    assert _pixels_digest(11, 4, 96) == (
        "c76293e9d742649507214f4f7d302cfe4863e8621dc165534b7e57522a20d736"
    )


def test_classes_write_label_images_over_the_same_images(tmp_path: Path) -> None:
    write_dataset(tmp_path / "binary", n=3, seed=4, size=96)
    write_dataset(tmp_path / "classes", n=3, seed=4, size=96, classes=["nucleus", "debris"])
    write_dataset(tmp_path / "swapped", n=3, seed=4, size=96, classes=["debris", "nucleus"])
    binary, classes = _files(tmp_path / "binary"), _files(tmp_path / "classes")
    assert {k: v for k, v in binary.items() if k.startswith("images")} == {
        k: v for k, v in classes.items() if k.startswith("images")
    }
    seen = set()
    for i in range(3):
        name = f"{i:04d}.png"
        labels = np.asarray(Image.open(tmp_path / "classes" / "masks" / name))
        swapped = np.asarray(Image.open(tmp_path / "swapped" / "masks" / name))
        mask = np.asarray(Image.open(tmp_path / "binary" / "masks" / name))
        assert labels.dtype == np.uint8 and labels.shape == (96, 96)
        seen |= set(np.unique(labels).tolist())
        assert np.array_equal(labels == 1, mask == 255)  # the nucleus class is the binary mask
        assert np.array_equal(swapped == 1, labels == 2)
        assert np.array_equal(swapped == 2, labels == 1)
    assert seen == {0, 1, 2}


def test_debris_labels_mark_the_bright_specks() -> None:
    for i in range(6):
        image, labels = generate_labelled(pair_rng(2, i), 128)
        same_image, mask = generate_pair(pair_rng(2, i), 128)
        assert np.array_equal(image, same_image)
        assert np.array_equal(labels == 1, mask)
        if (labels == 2).any():
            background = image[labels == 0].astype(float)
            # Debris is brighter than the background around it on average.
            assert image[labels == 2].mean() > np.median(background) + 20


@pytest.mark.parametrize(
    ("classes", "message"),
    [
        (["nucleus", "cell"], "unknown class 'cell'; the generator labels nucleus, debris"),
        (["debris", "debris"], "repeat a name"),
        ([], "at least one class"),
    ],
)
def test_classes_the_generator_cannot_label_are_refused(
    tmp_path: Path, classes: list[str], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        write_dataset(tmp_path, n=1, seed=0, size=32, classes=classes)
    assert not (tmp_path / "images").exists()
