"""Decoding images: encoded bytes or files to arrays, sizes read from headers, intensity scaling.

Images become float32 (C, H, W), normalised as a model card's `input` says (`image_from_bytes`,
`model.data.normalize`). Under the `dtype` rule (and before `fixed`), `to_unit` scales them into
[0, 1]; the statistics-based rules (`minmax`, `percentile`, `zscore`) start from the decoded
values instead, and only `minmax` ends in [0, 1] (percentiles are unclipped). `to_unit`'s rules:
- 8- and 16-bit unsigned integers are divided by 255 and 65535; 1-bit images become 0 and 1;
- floats already within [0, 1] are kept; other floats, signed integers and wider unsigned integers
  (arbitrary units, such as a microscope's float TIFF) are min-max scaled, without overflow even
  for values near the float64 limits; a constant image becomes 0;
- NaN or infinite pixels are refused (`NonFiniteImageError`): no scaling can make them data;
- alpha is dropped; 1 channel means ITU-R 601 luminance, 3 means RGB (grey replicated).
TIFF is read with tifffile (16-bit RGB, planar layouts, first page of a stack) when it is
uncompressed, deflated, LZMA- or PackBits-compressed, with Pillow otherwise (LZW, JPEG); the other
formats (PNG, JPEG, BMP, GIF; no others) with Pillow, first frame only. Before any pixel is
decoded, the header's size is checked: width x height against the pixel limit, and samples x
bytes per sample (and one strip's or tile's size) against `BYTES_PER_PIXEL` bytes per allowed
pixel, so a small file cannot expand into a large array. Nor can its compressed data: every TIFF
strip or tile tifffile would inflate is first inflated streaming and refused past its declared
size (`model.data.inflation`); Pillow's decoders (libtiff, PNG's zlib) stop at the declared size by
themselves, and a PNG's text chunks may inflate to `PNG_TEXT_BYTES` in all. Every problem is a
`DatasetError` whose one-line message names the file and says what to fix.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image, PngImagePlugin, UnidentifiedImageError

from model.data.inflation import check_segments, segment_bytes, tifffile_may_decode
from model.data.normalize import ImageInput, is_narrow_unsigned, normalize, unit_magnitude
from model.errors import (
    DatasetError,
    ImageTooLargeError,
    InflationError,
    LabelError,
    NonFiniteImageError,
    OverInflatedError,
)

# A channel count (the `dtype` rule) or a model card's whole `input` section.
Channels = int | ImageInput
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601
# The decoded-size budget per allowed pixel: 4 channels of 4 bytes (RGBA float32 or uint32).
BYTES_PER_PIXEL = 16
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
# Pillow reads these and nothing else: its other plugins (FITS, ICNS, PSD...) are attack surface.
PILLOW_FORMATS = ("PNG", "JPEG", "TIFF", "BMP", "GIF")
# A PNG's text chunks are inflated as it opens, before any size check, and serve nothing here:
# at most 1 MiB of them in all (Pillow's default, 64 MiB, lets a 60 KB file cost 60 MB).
PNG_TEXT_BYTES = 1 << 20
PngImagePlugin.MAX_TEXT_MEMORY = PNG_TEXT_BYTES
_PIXEL_KINDS = "biuf"  # bool, signed and unsigned integers, floats; not complex or structured


@dataclass(frozen=True)
class ImageHeader:
    """What an image's header declares, read without decoding its pixels."""

    width: int
    height: int
    decoded_bytes: int  # the size of the array the decoder would allocate


def pixel_limit(max_pixels: int | None) -> int | None:
    """The tighter of `max_pixels` and Pillow's decompression-bomb limit (None: no limit)."""
    limits = [n for n in (max_pixels, Image.MAX_IMAGE_PIXELS) if n is not None]
    return min(limits) if limits else None


def check_header(name: str, header: ImageHeader, max_pixels: int | None) -> None:
    """ImageTooLargeError when the header declares more pixels or bytes than allowed."""
    limit = pixel_limit(max_pixels)
    if limit is None:
        return
    width, height = header.width, header.height
    if width * height > limit:
        raise ImageTooLargeError(
            f"{name}: image is {width} x {height} = {width * height} pixels, over the limit of "
            f"{limit} pixels; send a smaller image"
        )
    if header.decoded_bytes > limit * BYTES_PER_PIXEL:
        raise ImageTooLargeError(
            f"{name}: image decodes to {header.decoded_bytes} bytes, over the limit of "
            f"{limit * BYTES_PER_PIXEL} bytes ({BYTES_PER_PIXEL} per allowed pixel); send a "
            "smaller image, fewer channels or fewer bits per sample"
        )


def _source(data: bytes | Path) -> io.BytesIO | Path:
    return Path(data) if isinstance(data, Path) else io.BytesIO(data)


def _magic(data: bytes | Path) -> bytes:
    if isinstance(data, Path):
        with data.open("rb") as file:
            return file.read(4)
    return data[:4]


def _page_header(page: tifffile.TiffPage) -> ImageHeader:
    decoded = math.prod(page.shape) * page.dtype.itemsize if page.dtype is not None else 0
    # tifffile decodes one strip or tile at a time: a 1 x 1 image may declare 4 GiB tiles.
    return ImageHeader(page.imagewidth, page.imagelength, max(decoded, segment_bytes(page)))


def _tiff_header(data: bytes | Path) -> ImageHeader:
    with tifffile.TiffFile(_source(data)) as tif:
        return _page_header(tif.pages.first)


def _check_segments(page: tifffile.TiffPage, name: str) -> None:
    try:
        check_segments(page)
    except InflationError as error:
        raise OverInflatedError(
            f"{name}: {error}; the file is damaged or hostile, save the image again"
        ) from None


def _pillow_header(image: Image.Image) -> ImageHeader:
    bands = 4 if image.mode in ("P", "PA") else len(image.getbands())  # palettes become RGBA
    depth = 2 if image.mode.startswith("I;16") else 4 if image.mode in ("I", "F") else 1
    return ImageHeader(image.width, image.height, image.width * image.height * bands * depth)


def _open_pillow(data: bytes | Path, name: str) -> Image.Image:
    try:
        return Image.open(_source(data), formats=PILLOW_FORMATS)
    except Image.DecompressionBombError:
        raise ImageTooLargeError(
            f"{name}: image has more pixels than the limit of {Image.MAX_IMAGE_PIXELS} pixels "
            "(decompression-bomb guard); send a smaller image"
        ) from None


def _from_tifffile(data: bytes, name: str, max_pixels: int | None) -> np.ndarray | None:
    """The first page's pixels; None for a codec tifffile cannot run with a bound (Pillow can)."""
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        page = tif.pages.first
        check_header(name, _page_header(page), max_pixels)
        if not tifffile_may_decode(page):
            return None
        _check_segments(page, name)
        array = page.asarray(maxworkers=1)  # one decoded segment in memory at a time
        # Keep rows, columns and samples; take the first plane of any other axis.
        array = array[tuple(slice(None) if a in "YXS" else 0 for a in page.axes)]
        axes = "".join(a for a in page.axes if a in "YXS")
    return np.moveaxis(array, 0, -1) if axes == "SYX" else array


def _from_pillow(data: bytes, name: str, max_pixels: int | None, palette: bool) -> np.ndarray:
    with _open_pillow(data, name) as image:
        check_header(name, _pillow_header(image), max_pixels)
        if image.mode in ("P", "PA"):
            # Masks keep palette indices (0 = background, as label tools write them).
            return np.asarray(image.convert("P") if palette else image.convert("RGBA"))
        if image.mode in ("1", "La"):
            return np.asarray(image.convert("L"))
        if image.mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBa"):
            return np.asarray(image.convert("RGB"))
        return np.asarray(image)


def _unreadable(name: str, tiff: bool, error: Exception) -> DatasetError:
    kind = "TIFF" if tiff else "image (PNG, JPEG, TIFF, BMP or GIF)"
    reason = (str(error).splitlines() or [type(error).__name__])[0][:200]
    if isinstance(error, UnidentifiedImageError):  # its text names an in-memory buffer
        reason = "unknown format or corrupt data"
    return DatasetError(f"{name}: not a readable {kind} ({reason}); replace the file")


def read_header(data: bytes | Path, name: str = "upload") -> ImageHeader:
    """The size an encoded image (bytes or a file) declares, from its header alone."""
    try:
        tiff = _magic(data) in _TIFF_MAGIC
    except OSError as error:
        raise DatasetError(f"{name}: cannot read ({error.strerror}); check the path") from None
    try:
        if tiff:
            try:
                return _tiff_header(data)
            except Exception:  # a layout tifffile refuses: Pillow may still read the header
                pass
        with _open_pillow(data, name) as image:
            return _pillow_header(image)
    except DatasetError:
        raise
    except Exception as error:  # decoders raise many types on bad input; all mean "unreadable"
        raise _unreadable(name, tiff, error) from None


def check_image(path: Path, max_pixels: int | None, name: str | None = None) -> None:
    """DatasetError unless the image file's declared size is within the limits and, for a TIFF,
    every strip or tile tifffile would inflate stays within its declared size.

    Reads the header and inflates nothing into memory: a calibration set is checked this way
    before it is accepted.
    """
    shown = str(path) if name is None else name
    header = read_header(Path(path), shown)
    check_header(shown, header, max_pixels)
    if _magic(Path(path)) not in _TIFF_MAGIC:
        return  # Pillow's decoders stop at the declared size by themselves
    try:
        with tifffile.TiffFile(Path(path)) as tif:
            page = tif.pages.first
            if tifffile_may_decode(page):
                _check_segments(page, shown)
    except DatasetError:
        raise
    except Exception:  # a layout tifffile refuses: Pillow decodes it, bounded, or refuses it
        pass


def decode(data: bytes, name: str, max_pixels: int | None, palette: bool = False) -> np.ndarray:
    """The first image in `data` as an (H, W) or (H, W, C) array of its own dtype."""
    tiff = data[:4] in _TIFF_MAGIC
    try:
        if tiff:
            try:
                array = _from_tifffile(data, name, max_pixels)
            except DatasetError:
                raise
            except Exception:  # a layout tifffile refuses: Pillow may still read it
                array = None
            if array is not None:
                return array
        return _from_pillow(data, name, max_pixels, palette)
    except DatasetError:
        raise
    except Exception as error:  # decoders raise many types on bad input; all mean "unreadable"
        raise _unreadable(name, tiff, error) from None


def check_pixels(array: np.ndarray, name: str = "upload") -> None:
    """DatasetError unless `array` holds finite integer, boolean or real pixel values."""
    if array.dtype.kind not in _PIXEL_KINDS:
        raise DatasetError(
            f"{name}: pixels of type {array.dtype} are not supported; save the image with "
            "integer or real (not complex) samples"
        )
    if array.dtype.kind == "f":
        bad = array.size - int(np.count_nonzero(np.isfinite(array)))
        if bad:
            raise NonFiniteImageError(
                f"{name}: {bad} of {array.size} pixel values are NaN or infinite; replace them "
                "with finite numbers"
            )


def to_unit(array: np.ndarray, name: str = "upload") -> np.ndarray:
    """Pixel values as finite float32 in [0, 1], by the rules in the module docstring."""
    check_pixels(array, name)
    if array.dtype == bool:
        return array.astype(np.float32)
    if array.dtype.kind == "u" and array.dtype.itemsize <= 2:
        return (array / np.float32(np.iinfo(array.dtype).max)).astype(np.float32)
    values = array.astype(np.float64)
    if values.size == 0:
        return values.astype(np.float32)
    lo, hi = float(values.min()), float(values.max())
    if array.dtype.kind == "f" and lo >= 0 and hi <= 1:
        return values.astype(np.float32)
    # Divide by the largest magnitude first: `hi - lo` of values near +-1.7e308 overflows.
    scale = max(abs(lo), abs(hi))
    if scale == 0 or lo == hi:
        return np.zeros(values.shape, dtype=np.float32)
    values /= scale
    lo, hi = lo / scale, hi / scale
    span = hi - lo  # at most 2 now
    if span <= 0:  # distinct values that became one after the division
        return np.zeros(values.shape, dtype=np.float32)
    values -= lo
    values /= span
    return np.clip(values, 0, 1, out=values).astype(np.float32)


def to_channels(array: np.ndarray, channels: int, name: str) -> np.ndarray:
    """(H, W) or (H, W, C) pixels as (channels, H, W); a converted image becomes float32."""
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
    data: bytes, channels: Channels = 1, name: str = "upload", max_pixels: int | None = None
) -> np.ndarray:
    """Decode an encoded image to finite float32 (C, H, W), normalised as `channels` says.

    `channels` is a count (today's `dtype` rule: [0, 1]) or a model card's `ImageInput`.
    """
    return image_from_array(decode(data, name, max_pixels), channels, name)


def image_from_array(array: np.ndarray, channels: Channels = 1, name: str = "upload") -> np.ndarray:
    """(H, W) or (H, W, C) pixels of their own dtype as `image_from_bytes` makes a decoded file."""
    spec = channels if isinstance(channels, ImageInput) else None
    count = spec.channels if spec is not None else int(channels)  # type: ignore[arg-type]
    if count < 1:
        raise ValueError(f"channels must be at least 1, got {count}")
    if spec is None or spec.normalize.scales_by_dtype:
        pixels = to_unit(array, name)
    else:  # the image's own statistics set the scale: keep its values as they are
        check_pixels(array, name)
        # A camera's 8- or 16-bit integers cannot overflow, and stay integers for `normalize`,
        # which reads their percentiles from a histogram instead of sorting them.
        pixels = array if is_narrow_unsigned(array) else unit_magnitude(array)
    image = to_channels(pixels, count, name)
    if spec is None:
        return image
    if spec.order == "BGR":
        image = np.ascontiguousarray(image[::-1])
    return normalize(image, spec.normalize)


def read_bytes(path: Path) -> bytes:
    """The file's bytes, or DatasetError naming it."""
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise DatasetError(f"{path}: cannot read ({error.strerror}); check the path") from None


def read_image(path: Path, channels: Channels = 1, max_pixels: int | None = None) -> np.ndarray:
    """Read an image file as finite float32 (C, H, W), normalised as `channels` says."""
    return image_from_bytes(read_bytes(path), channels, str(path), max_pixels)


def read_mask(path: Path) -> np.ndarray:
    """Read a mask file as bool (H, W): any non-zero pixel (in any colour channel) is foreground."""
    array = decode(read_bytes(path), str(path), None, palette=True)
    if array.ndim == 3 and array.shape[-1] in (2, 4):
        array = array[..., :-1]  # alpha says nothing about the label
    foreground = np.nan_to_num(array, nan=0) != 0
    return foreground.any(axis=-1) if foreground.ndim == 3 else foreground


def read_labels(path: Path, n_classes: int) -> np.ndarray:
    """A label image (H, W) of integers 0..n_classes; grey, palette or equal-channel colour."""
    array = decode(read_bytes(path), str(path), None, palette=True)
    if array.ndim == 3:
        if array.shape[-1] in (2, 4):
            array = array[..., :-1]  # alpha says nothing about the label
        if not (array == array[..., :1]).all():
            raise LabelError(
                f"{path}: a label image holds one value per pixel (0 background, 1..{n_classes} "
                "the classes); this one has colours, save it as 8-bit grey"
            )
        array = array[..., 0]
    if not np.issubdtype(array.dtype, np.integer):
        raise LabelError(f"{path}: a label image holds integers 0..{n_classes}, not {array.dtype}")
    high = int(array.max())
    if high > n_classes:
        raise LabelError(
            f"{path}: label value {high} is outside 0..{n_classes} (0 background, 1..{n_classes} "
            "the model's classes in order); relabel the image or fix the model's classes"
        )
    return array.astype(np.uint8 if n_classes < 256 else np.uint16)


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image file from its header, without decoding the pixels."""
    header = read_header(Path(path), str(path))
    return header.width, header.height
