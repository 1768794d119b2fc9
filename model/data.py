"""Reading segmentation data: images and masks from files or bytes, and `images/` + `masks/` sets.

Images become float32 (C, H, W) in [0, 1]:
- 8- and 16-bit integers are divided by 255 and 65535; 1-bit images become 0 and 1;
- floats already within [0, 1] are kept; other floats, signed integers and wider unsigned integers
  (arbitrary units, such as a microscope's float TIFF) are min-max scaled; NaN and inf become 0;
- alpha is dropped; 1 channel means ITU-R 601 luminance, 3 means RGB (grey replicated).
TIFF is read with tifffile (16-bit RGB, planar layouts, first page of a stack), with Pillow where
tifffile lacks the codec (LZW, JPEG); other formats with Pillow, first frame only. Every problem
is a `DatasetError` whose one-line message names the file and says what to fix.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tifffile
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, get_worker_info
from tqdm import tqdm

EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif")
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_SHOWN = 3  # how many unmatched file names an error lists


class DatasetError(ValueError):
    """A data problem; the message is one line naming the file and what to fix."""


class ImageTooLargeError(DatasetError):
    """An image with more pixels than the configured limit or Pillow's decompression-bomb guard."""


def _check_pixels(name: str, width: int, height: int, max_pixels: int | None) -> None:
    limits = [n for n in (max_pixels, Image.MAX_IMAGE_PIXELS) if n is not None]
    if limits and width * height > min(limits):
        raise ImageTooLargeError(
            f"{name}: image is {width} x {height} = {width * height} pixels, over the limit of "
            f"{min(limits)} pixels; send a smaller image"
        )


def _from_tifffile(data: bytes, name: str, max_pixels: int | None) -> np.ndarray:
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        page = tif.pages.first
        _check_pixels(name, page.imagewidth, page.imagelength, max_pixels)
        array = page.asarray()
        # Keep rows, columns and samples; take the first plane of any other axis.
        array = array[tuple(slice(None) if a in "YXS" else 0 for a in page.axes)]
        axes = "".join(a for a in page.axes if a in "YXS")
    return np.moveaxis(array, 0, -1) if axes == "SYX" else array


def _from_pillow(data: bytes, name: str, max_pixels: int | None, palette: bool) -> np.ndarray:
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise ImageTooLargeError(
            f"{name}: image has more pixels than the limit of {Image.MAX_IMAGE_PIXELS} pixels "
            "(decompression-bomb guard); send a smaller image"
        ) from None
    with image:
        _check_pixels(name, image.width, image.height, max_pixels)
        if image.mode in ("P", "PA"):
            # Masks keep palette indices (0 = background, as label tools write them).
            return np.asarray(image.convert("P") if palette else image.convert("RGBA"))
        if image.mode in ("1", "La"):
            return np.asarray(image.convert("L"))
        if image.mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBa"):
            return np.asarray(image.convert("RGB"))
        return np.asarray(image)


def _decode(data: bytes, name: str, max_pixels: int | None, palette: bool = False) -> np.ndarray:
    """The first image in `data` as an (H, W) or (H, W, C) array of its own dtype."""
    tiff = data[:4] in _TIFF_MAGIC
    try:
        if tiff:
            try:
                return _from_tifffile(data, name, max_pixels)
            except DatasetError:
                raise
            except Exception:  # a codec tifffile lacks (LZW, JPEG): Pillow has it
                pass
        return _from_pillow(data, name, max_pixels, palette)
    except DatasetError:
        raise
    except Exception as error:  # decoders raise many types on bad input; all mean "unreadable"
        kind = "TIFF" if tiff else "image (PNG, JPEG, TIFF, BMP or GIF)"
        reason = (str(error).splitlines() or [type(error).__name__])[0][:200]
        if isinstance(error, UnidentifiedImageError):  # its text names an in-memory buffer
            reason = "unknown format or corrupt data"
        raise DatasetError(f"{name}: not a readable {kind} ({reason}); replace the file") from None


def _to_unit(array: np.ndarray) -> np.ndarray:
    """Pixel values as float32 in [0, 1], by the rules in the module docstring."""
    if array.dtype == bool:
        return array.astype(np.float32)
    if array.dtype.kind == "u" and array.dtype.itemsize <= 2:
        return (array / np.float32(np.iinfo(array.dtype).max)).astype(np.float32)
    values = np.where(np.isfinite(array), array, 0).astype(np.float64)
    lo, hi = (values.min(), values.max()) if values.size else (0.0, 0.0)
    if array.dtype.kind == "f" and lo >= 0 and hi <= 1:
        return values.astype(np.float32)
    span = hi - lo
    return ((values - lo) / span if span > 0 else np.zeros_like(values)).astype(np.float32)


def _to_channels(array: np.ndarray, channels: int, name: str) -> np.ndarray:
    """(H, W) or (H, W, C) floats as (channels, H, W)."""
    pixels = array[..., None] if array.ndim == 2 else array
    if pixels.ndim != 3:
        raise DatasetError(
            f"{name}: image has shape {array.shape}; give a 2-D grey or colour image"
        )
    native = pixels.shape[-1]
    if native == channels:
        return np.ascontiguousarray(np.moveaxis(pixels, -1, 0))
    if native in (2, 4):  # grey + alpha, RGBA
        pixels = pixels[..., : native - 1]
    if channels == 1 and pixels.shape[-1] == 3:
        pixels = pixels @ LUMA[:, None]
    elif channels == 3 and pixels.shape[-1] == 1:
        pixels = np.repeat(pixels, 3, axis=-1)
    if pixels.shape[-1] != channels:
        raise DatasetError(
            f"{name}: image has {native} channels but the model takes {channels}; convert it"
        )
    return np.ascontiguousarray(np.moveaxis(pixels, -1, 0), dtype=np.float32)


def image_from_bytes(
    data: bytes, channels: int = 1, name: str = "upload", max_pixels: int | None = None
) -> np.ndarray:
    """Decode an encoded image to float32 (channels, H, W) in [0, 1]."""
    if channels < 1:
        raise ValueError(f"channels must be at least 1, got {channels}")
    return _to_channels(_to_unit(_decode(data, name, max_pixels)), channels, name)


def _read_bytes(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise DatasetError(f"{path}: cannot read ({error.strerror}); check the path") from None


def read_image(path: Path, channels: int = 1, max_pixels: int | None = None) -> np.ndarray:
    """Read an image file as float32 (channels, H, W) in [0, 1]."""
    return image_from_bytes(_read_bytes(path), channels, str(path), max_pixels)


def read_mask(path: Path) -> np.ndarray:
    """Read a mask file as bool (H, W): any non-zero pixel (in any colour channel) is foreground."""
    array = _decode(_read_bytes(path), str(path), None, palette=True)
    if array.ndim == 3 and array.shape[-1] in (2, 4):
        array = array[..., :-1]  # alpha says nothing about the label
    foreground = np.nan_to_num(array, nan=0) != 0
    return foreground.any(axis=-1) if foreground.ndim == 3 else foreground


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
    image_path: Path, mask_path: Path, channels: int = 1, max_pixels: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """An image (float32, channels x H x W) and its mask (bool, H x W), checked to match in size."""
    image, mask = read_image(image_path, channels, max_pixels), read_mask(mask_path)
    if image.shape[1:] != mask.shape:
        (height, width), (mask_h, mask_w) = image.shape[1:], mask.shape
        raise DatasetError(
            f"{image_path} is {width} x {height} px but its mask {mask_path} is "
            f"{mask_w} x {mask_h} px; give them the same size"
        )
    return image, mask


def iter_pairs(
    root: Path, channels: int = 1, progress: bool = False, desc: str = "images"
) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(image file name, image, mask) for every pair under `root`, read one at a time."""
    pairs = find_pairs(root)
    for image_path, mask_path in tqdm(pairs, desc=desc, disable=not progress, file=sys.stderr):
        image, mask = load_pair(image_path, mask_path, channels)
        yield image_path.name, image, mask


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image file from its header, without decoding the pixels."""
    try:
        with Image.open(path) as image:
            return image.size
    except Exception:  # not Pillow's (or a bomb): the full decoder gives the real verdict
        array = _decode(_read_bytes(path), str(path), None, palette=True)
        return array.shape[1], array.shape[0]


class SegmentationFolder(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """An `images/` + `masks/` folder as (image (C, H, W), mask (1, H, W) of 0/1) float tensors.

    Pairs and sizes are checked when it is built, so a broken set fails at once, naming the file.
    With `augment`, each item is flipped and rotated by multiples of 90 degrees at random (the
    same for image and mask; non-square images only by 180 degrees so that sizes stay put).
    """

    def __init__(self, root: Path, channels: int = 1, augment: bool = False, seed: int = 0) -> None:
        self.root, self.channels, self.augment, self.seed = Path(root), channels, augment, seed
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
        image, mask = load_pair(*self.pairs[index], self.channels)
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
