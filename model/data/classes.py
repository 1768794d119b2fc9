"""Multi-class data sets: label images in `masks/` (multiclass) or `masks/<class>/` (multilabel).

A multiclass set pairs each image with one label image of the same stem: 0 background and k where
the k-th class (the model's `output.classes` order) is. A multilabel set has one folder of binary
masks per class, named as the class, each holding a mask for every image. Everything that does not
fit the model's classes is a `LabelError` whose one line names the file and what was expected.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from model.data.datasets import EXTENSIONS, find_pairs
from model.data.decoding import Channels, read_image, read_labels, read_mask
from model.errors import DatasetError, LabelError


def _class_folders(root: Path, classes: Sequence[str]) -> None:
    """The folders under `masks/` must be exactly the model's classes."""
    masks = root / "masks"
    found = sorted(p.name for p in masks.iterdir() if p.is_dir() and not p.name.startswith("."))
    loose = [p.name for p in masks.iterdir() if p.is_file() and p.suffix.lower() in EXTENSIONS]
    if sorted(classes) != found or loose:
        raise LabelError(
            f"{masks}: a multilabel set has one folder of binary masks per class, exactly "
            f"{', '.join(classes)}; found folders {', '.join(found) or 'none'}"
            + (f" and {len(loose)} loose mask file(s)" if loose else "")
        )


def iter_class_pairs(
    root: Path,
    classes: Sequence[str],
    mode: str,
    channels: Channels = 1,
    progress: bool = False,
    desc: str = "images",
) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(image file name, image, target) one at a time: a label image (H, W) for multiclass, a
    stack of class masks (K, H, W) for multilabel, checked against the image's size."""
    root = Path(root)
    if mode == "multiclass":
        pairs = find_pairs(root)
        for image_path, mask_path in tqdm(pairs, desc=desc, disable=not progress, file=sys.stderr):
            image = read_image(image_path, channels)
            target = read_labels(mask_path, len(classes))
            yield image_path.name, image, _same_size(image, target, image_path, mask_path)
        return
    if not (root / "masks").is_dir():
        find_pairs(root)  # raises the data set error naming what is missing
    _class_folders(root, classes)
    images = sorted(
        p for p in (root / "images").iterdir() if p.is_file() and p.suffix.lower() in EXTENSIONS
    )
    if not images:
        raise DatasetError(f"{root / 'images'}: no images found; add the images")
    for image_path in tqdm(images, desc=desc, disable=not progress, file=sys.stderr):
        image = read_image(image_path, channels)
        masks = []
        for name in classes:
            mask_path = _mask_for(root / "masks" / name, image_path.stem)
            masks.append(_same_size(image, read_mask(mask_path), image_path, mask_path))
        yield image_path.name, image, np.stack(masks)


def _mask_for(folder: Path, stem: str) -> Path:
    """The mask of `stem` in a class folder."""
    found = [p for p in folder.glob(f"{stem}.*") if p.suffix.lower() in EXTENSIONS]
    if len(found) != 1:
        what = "no mask" if not found else f"{len(found)} masks"
        raise LabelError(
            f"{folder}: {what} for image {stem!r}; every class folder needs one mask per image"
        )
    return found[0]


def _same_size(
    image: np.ndarray, target: np.ndarray, image_path: Path, mask_path: Path
) -> np.ndarray:
    """`target` if it has the image's height and width, else a LabelError naming both."""
    if image.shape[1:] != target.shape:
        (height, width), (mask_h, mask_w) = image.shape[1:], target.shape
        raise LabelError(
            f"{image_path} is {width} x {height} px but its mask {mask_path} is "
            f"{mask_w} x {mask_h} px; give them the same size"
        )
    return target
