"""Segmentation data sets: `images/` + `masks/` folders, paired by file stem and read pair by pair.

Decoding itself lives in `model.data.decoding`; every problem here is a `DatasetError` whose
one-line message names the file and says what to fix.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info
from tqdm import tqdm

from model.data.decoding import Channels, image_size, read_image, read_labels, read_mask
from model.errors import DatasetError

__all__ = [
    "EXTENSIONS",
    "DatasetError",
    "SegmentationFolder",
    "find_pairs",
    "iter_pairs",
    "load_pair",
]

EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif")
_SHOWN = 3  # how many unmatched file names an error lists


def _by_stem(folder: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() not in EXTENSIONS:
            continue
        if not path.is_file():
            continue
        if path.stem in files:
            raise DatasetError(
                f"{folder}: {files[path.stem].name} and {path.name} share the stem "
                f"{path.stem!r}; keep one"
            )
        files[path.stem] = path
    return files


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_SHOWN])
    return shown + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


def find_pairs(root: Path) -> list[tuple[Path, Path]]:
    """(image, mask) paths of the data set at `root`, matched by file stem, sorted by stem."""
    root = Path(root)
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise DatasetError(f"{root}: {what}; give a data set folder holding images/ and masks/")
    for sub in ("images", "masks"):
        if not (root / sub).is_dir():
            raise DatasetError(f"{root}: has no {sub}/ folder; put the {sub} in {root / sub}/")
    images, masks = _by_stem(root / "images"), _by_stem(root / "masks")
    if not images:
        raise DatasetError(
            f"{root / 'images'}: no images found; add files ending in {', '.join(EXTENSIONS)}"
        )
    lonely = [images[stem].name for stem in images if stem not in masks]
    if lonely:
        raise DatasetError(
            f"{root / 'masks'}: no mask for {len(lonely)} image(s) ({_listing(lonely)}); "
            "add masks with the same file stems"
        )
    orphans = [masks[stem].name for stem in masks if stem not in images]
    if orphans:
        raise DatasetError(
            f"{root / 'images'}: no image for {len(orphans)} mask(s) ({_listing(orphans)}); "
            "add the images or remove those masks"
        )
    return [(images[stem], masks[stem]) for stem in sorted(images)]


def load_pair(
    image_path: Path,
    mask_path: Path,
    channels: Channels = 1,
    max_pixels: int | None = None,
    n_classes: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """An image (float32, channels x H x W) and its mask (bool, H x W), checked to match in size.

    With `n_classes`, the mask is a label image of 0..n_classes (integers) instead.
    """
    image = read_image(image_path, channels, max_pixels)
    mask = read_mask(mask_path) if n_classes is None else read_labels(mask_path, n_classes)
    if image.shape[1:] != mask.shape:
        (height, width), (mask_h, mask_w) = image.shape[1:], mask.shape
        raise DatasetError(
            f"{image_path} is {width} x {height} px but its mask {mask_path} is "
            f"{mask_w} x {mask_h} px; give them the same size"
        )
    return image, mask


def iter_pairs(
    root: Path, channels: Channels = 1, progress: bool = False, desc: str = "images"
) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(image file name, image, mask) for every pair under `root`, read one at a time."""
    pairs = find_pairs(root)
    for image_path, mask_path in tqdm(pairs, desc=desc, disable=not progress, file=sys.stderr):
        image, mask = load_pair(image_path, mask_path, channels)
        yield image_path.name, image, mask


class SegmentationFolder(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """An `images/` + `masks/` folder as (image (C, H, W), mask (1, H, W) of 0/1) float tensors.

    With `n_classes`, masks are label images and the mask tensor holds their values 0..n_classes.

    Pairs and sizes are checked when it is built, so a broken set fails at once, naming the file.
    With `augment`, each item is flipped and rotated by multiples of 90 degrees at random (the
    same for image and mask; non-square images only by 180 degrees so that sizes stay put).
    """

    def __init__(
        self,
        root: Path,
        channels: Channels = 1,
        augment: bool = False,
        seed: int = 0,
        n_classes: int | None = None,
    ) -> None:
        self.root, self.channels, self.augment, self.seed = Path(root), channels, augment, seed
        self.n_classes = n_classes
        self.pairs = find_pairs(self.root)
        self.names = [image_path.stem for image_path, _ in self.pairs]
        for image_path, mask_path in self.pairs:
            if image_size(image_path) != image_size(mask_path):
                load_pair(image_path, mask_path, channels)  # raises with both sizes named
        self._rng = np.random.default_rng(seed)
        self._worker_seed: int | None = None

    def __len__(self) -> int:
        """The number of image/mask pairs."""
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The `index`-th pair as (image, mask) float tensors."""
        image, mask = load_pair(*self.pairs[index], self.channels, n_classes=self.n_classes)
        if self.augment:
            image, mask = self._augment(image, mask)
        return (
            torch.from_numpy(np.ascontiguousarray(image)),
            torch.from_numpy(np.ascontiguousarray(mask[None], dtype=np.float32)),
        )

    def _augment(self, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rng = self._generator()
        square = mask.shape[0] == mask.shape[1]
        turns = int(rng.integers(4)) if square else 2 * int(rng.integers(2))
        image, mask = np.rot90(image, turns, axes=(1, 2)), np.rot90(mask, turns)
        if rng.random() < 0.5:
            image, mask = image[:, :, ::-1], mask[:, ::-1]
        return image, mask

    def _generator(self) -> np.random.Generator:
        # DataLoader workers start from copies of one generator; reseed each from its worker seed
        # so that they do not all draw the same flips.
        info = get_worker_info()
        if info is not None and info.seed != self._worker_seed:
            self._worker_seed = info.seed
            self._rng = np.random.default_rng([self.seed, info.seed])
        return self._rng
