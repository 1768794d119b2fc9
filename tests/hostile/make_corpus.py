"""Generate the hostile-input corpus: images and zips an attacker or a broken instrument sends.

`python -m tests.hostile.make_corpus FOLDER` writes every case into FOLDER; the tests call
`write_corpus` on a temporary folder. Each case is small on disk; several declare or expand to
far more than the service allows. Cases:
- `dtype-*`: TIFFs of every integer and float sample type, with random, extreme (the type's
  limits, +-1.7e308 for float64) and constant values, plus booleans;
- `nonfinite-*`: float TIFFs holding NaN, +inf or -inf; `complex-*`: complex samples;
- `truncated-*`, `lying-*`: cut-off files and headers that promise data that is not there;
- `huge-*`: headers declaring 100,000 x 100,000 pixels; `bomb-*`: compressed images that expand
  past the pixel or byte limits (the 9000 x 9000 float64 TIFF of issue 10 among them);
- `inflate-*`: TIFFs of 1024 x 1024 bytes whose one deflated strip, or whose 16 tiles, inflate to
  1 GiB (issue 22: the header is honest, the compressed data is not);
- `overlong-*`: a PNG whose IDAT inflates to 1 GiB, far past the rows its header declares;
- `zip-*.zip`: calibration data sets holding one such image next to a valid mask, and
  `zip-three-inflating-strips.zip`, a deflated 10 KB zip of three `inflate-` strips.
"""

from __future__ import annotations

import io
import struct
import sys
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

SIDE = 32  # decodable cases are small: the model runs on every one of them
MiB = 1 << 20
GiB = 1 << 30
INTEGERS = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")
FLOATS = ("float16", "float32", "float64")


def tiff(array: np.ndarray, **options: object) -> bytes:
    """`array` as a TIFF file."""
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array, **options)  # type: ignore[arg-type]
    return buffer.getvalue()


def png(array: np.ndarray) -> bytes:
    """`array` (uint8 or bool) as a PNG file."""
    buffer = io.BytesIO()
    Image.fromarray(array.astype(np.uint8) * 255 if array.dtype == bool else array).save(
        buffer, "PNG"
    )
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, kind, data and CRC."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_stream(width: int, height: int, colour: int, idat: bytes) -> bytes:
    """A PNG whose header says `width` x `height` whatever the IDAT holds."""
    header = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def png_bomb(width: int, height: int, channels: int) -> bytes:
    """A real PNG of zeros, compressed row by row so that writing it takes little memory."""
    compressor = zlib.compressobj(9)
    row = b"\x00" * (1 + width * channels)
    parts = [compressor.compress(row) for _ in range(height)]
    colour = {1: 0, 3: 2, 4: 6}[channels]
    return png_stream(width, height, colour, b"".join(parts) + compressor.flush())


def tiff_bomb(height: int, width: int, samples: int, dtype: str) -> bytes:
    """A tiled, deflated TIFF of zeros: small on disk, huge decoded.

    One tile is compressed once and written for every tile position (tifffile takes encoded
    tiles as bytes), so making a 2.5 GiB image costs milliseconds.
    """
    tile = (512, 512)
    shape = (height, width, samples) if samples > 1 else (height, width)
    zeros = np.zeros((*tile, samples) if samples > 1 else tile, dtype=dtype)
    encoded = zlib.compress(zeros.tobytes(), 9)
    count = -(-height // tile[0]) * -(-width // tile[1])
    buffer = io.BytesIO()
    tifffile.imwrite(
        buffer,
        data=(encoded for _ in range(count)),
        shape=shape,
        dtype=dtype,
        tile=tile,
        compression="zlib",
        photometric="rgb" if samples in (3, 4) else "minisblack",
        extrasamples=["unassalpha"] if samples == 4 else None,
    )
    return buffer.getvalue()


def inflating_zlib(size: int) -> bytes:
    """A zlib stream of `size` zero bytes (a whole number of MiB), made in milliseconds.

    Each MiB is deflated once, ending on a full flush, which aligns it to a byte and forgets the
    history: every MiB's compressed bytes are then the same, and the stream is that block repeated,
    an empty final block and the Adler-32 of `size` zeros (a = 1, b = size mod 65521).
    """
    mib, rest = divmod(size, MiB)
    assert rest == 0, "a whole number of MiB"
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(bytes(MiB)) + compressor.flush(zlib.Z_FULL_FLUSH)
    adler = (size % 65521) << 16 | 1
    return b"\x78\xda" + block * mib + compressor.flush() + struct.pack(">I", adler)


def tiff_inflating(side: int, inflated: int, tile: int | None = None) -> bytes:
    """A `side` x `side` uint8 TIFF whose deflated segments inflate to `inflated` bytes in all.

    The header is honest (`side`^2 bytes); the data is not. Without `tile`, one strip holds all
    of it; with `tile`, each of the (side / tile)^2 tiles holds an equal share.
    """
    count = 1 if tile is None else (side // tile) ** 2
    encoded = inflating_zlib(inflated // count)
    buffer = io.BytesIO()
    tifffile.imwrite(
        buffer,
        data=(encoded for _ in range(count)),
        shape=(side, side),
        dtype="uint8",
        compression="zlib",
        **({"rowsperstrip": side} if tile is None else {"tile": (tile, tile)}),  # type: ignore[arg-type]
    )
    return buffer.getvalue()


def tiff_segment(
    encoded: bytes, compression: int = 8, fill_order: int = 1, side: int = 1024
) -> bytes:
    """A `side` x `side` uint8 TIFF whose one strip is `encoded`, compressed by `compression`.

    tifffile writes the strip as deflated (it cannot encode every codec, and would check nothing);
    the directory is then patched: its Compression, and CellLength (265, which sorts just before
    FillOrder) renamed to FillOrder (266), which tifffile refuses to write. FillOrder 2 stores each
    byte's bits reversed, so `encoded` is stored so.
    """
    if fill_order == 2:
        encoded = encoded.translate(bytes(int(f"{b:08b}"[::-1], 2) for b in range(256)))
    buffer = io.BytesIO()
    tifffile.imwrite(
        buffer,
        data=iter([encoded]),
        shape=(side, side),
        dtype="uint8",
        compression="zlib",
        rowsperstrip=side,
        extratags=[(265, "H", 1, fill_order, True)],
    )
    data = buffer.getvalue()
    for tag, old, new in ((259, 8, compression), (265, fill_order, fill_order)):
        entry = struct.pack("<HHIH", tag, 3, 1, old)
        assert data.count(entry) == 1
        data = data.replace(entry, struct.pack("<HHIH", 266 if tag == 265 else tag, 3, 1, new))
    return data


def lzw_zeros(size: int) -> bytes:
    """TIFF's LZW (MSB first, early change) of `size` zero bytes: about 1400 to 1.

    Within a run the k-th code after a clear stands for k zeros and names the entry the decoder
    is about to add (the KwKwK case); the table is cleared before it fills. A plain loop: 1 GiB
    takes a few seconds.
    """
    out = bytearray()
    bits, held = 0, 0

    def put(code: int, width: int) -> None:
        nonlocal bits, held
        bits, held = (bits << width) | code, held + width
        while held >= 8:
            held -= 8
            out.append((bits >> held) & 0xFF)
        bits &= (1 << held) - 1

    width, free, run, left = 9, 258, 1, size
    put(256, width)  # clear
    while left > 0:
        n = min(run, left)
        put(0 if n == 1 else 256 + n, width)
        left -= n
        if run == 1:  # the first code after a clear adds no entry
            run = 2
            continue
        free, run = free + 1, n + 1
        if free >= (1 << width) - 1 and width < 12:
            width += 1
        if free >= 4094 and left > 0:
            put(256, width)
            width, free, run = 9, 258, 1
    put(257, width)  # end of information
    if held:
        put(0, 8 - held)
    return bytes(out)


def _values(dtype: str, kind: str, rng: np.random.Generator) -> np.ndarray:
    info = np.finfo(dtype) if dtype.startswith("float") else np.iinfo(dtype)
    if kind == "extreme":  # alternating columns at the type's two limits
        array = np.full((SIDE, SIDE), info.max, dtype=dtype)
        array[:, ::2] = info.min
        return array
    if kind == "constant":
        return np.full((SIDE, SIDE), info.max, dtype=dtype)
    if dtype.startswith("float"):
        return (rng.standard_normal((SIDE, SIDE)) * 1000).astype(dtype)
    assert isinstance(info, np.iinfo)
    return rng.integers(info.min, info.max, (SIDE, SIDE), dtype=dtype, endpoint=True)


def images() -> Iterator[tuple[str, bytes]]:
    """(file name, bytes) of every hostile image."""
    rng = np.random.default_rng(10)
    for dtype in INTEGERS + FLOATS:
        for kind in ("random", "extreme", "constant"):
            yield f"dtype-{dtype}-{kind}.tif", tiff(_values(dtype, kind, rng))
    yield "dtype-bool.tif", tiff(rng.random((SIDE, SIDE)) > 0.5)
    yield (
        "dtype-float64-rgb-extreme.tif",
        tiff(np.stack([_values("float64", "extreme", rng)] * 3, axis=-1), photometric="rgb"),
    )
    yield (
        "dtype-float64-tiny-span.tif",
        tiff(1.0 + np.arange(SIDE * SIDE).reshape(SIDE, SIDE) * 1e-16),
    )
    for dtype in FLOATS:
        for name, value in (("nan", np.nan), ("posinf", np.inf), ("neginf", -np.inf)):
            array = rng.random((SIDE, SIDE)).astype(dtype)
            array[3, 5] = value
            yield f"nonfinite-{dtype}-{name}.tif", tiff(array)
    yield "complex-complex64.tif", tiff((rng.random((SIDE, SIDE)) + 1j).astype("complex64"))
    good_png = png(rng.integers(0, 256, (SIDE, SIDE), dtype=np.uint8))
    good_tiff = tiff(rng.random((SIDE, SIDE)).astype("float32"))
    yield "truncated-png.png", good_png[: len(good_png) // 2]
    yield "truncated-tiff.tif", good_tiff[: len(good_tiff) // 2]
    yield "truncated-header.tif", good_tiff[:12]
    yield "lying-png-short-idat.png", png_stream(64, 64, 0, zlib.compress(b"\x00" * 65))
    lying = bytearray(good_tiff)
    offset = lying.find(struct.pack("<HHI", 256, 3, 1))  # ImageWidth, SHORT, count 1
    if offset >= 0:
        lying[offset + 8 : offset + 10] = struct.pack("<H", 60000)
    yield "lying-tiff-width.tif", bytes(lying)
    yield "huge-png-declared.png", png_stream(100_000, 100_000, 0, zlib.compress(b"\x00" * 64))
    yield "huge-tiff-declared.tif", _tiff_declaring(100_000, 100_000)
    yield "bomb-png-grey-6000.png", png_bomb(6000, 6000, 1)
    yield "bomb-png-rgba-4100.png", png_bomb(4100, 4100, 4)
    yield "bomb-tiff-float64-9000.tif", tiff_bomb(9000, 9000, 1, "float64")
    yield "bomb-tiff-float64-rgba-9000.tif", tiff_bomb(9000, 9000, 4, "float64")
    # At the pixel limit, over the byte limit: 4096 x 4096 float64 RGBA decodes to 512 MiB.
    yield "bomb-tiff-float64-rgba-4096.tif", tiff_bomb(4096, 4096, 4, "float64")
    yield "inflate-tiff-strip-1gib.tif", tiff_inflating(1024, GiB)
    yield "inflate-tiff-tiles-1gib.tif", tiff_inflating(1024, GiB, tile=256)
    yield "overlong-png-idat-1gib.png", png_stream(SIDE, SIDE, 0, inflating_zlib(GiB))


def _tiff_declaring(width: int, height: int) -> bytes:
    """A little-endian TIFF whose one strip of float64 samples is declared but absent."""
    entries = [
        (256, 4, 1, width),  # ImageWidth
        (257, 4, 1, height),  # ImageLength
        (258, 3, 1, 64),  # BitsPerSample
        (259, 3, 1, 1),  # Compression: none
        (262, 3, 1, 1),  # Photometric: min-is-black
        (273, 4, 1, 8),  # StripOffsets
        (277, 3, 1, 1),  # SamplesPerPixel
        (278, 4, 1, height),  # RowsPerStrip
        (279, 4, 1, width * height * 8 % (1 << 32)),  # StripByteCounts
        (339, 3, 1, 3),  # SampleFormat: IEEE float
    ]
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        packed = struct.pack("<H", value) + b"\x00\x00" if kind == 3 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, kind, count) + packed
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0)


def dataset_zip(name: str, image: bytes) -> bytes:
    """A calibration zip holding `image` and a valid SIDE x SIDE half-foreground mask."""
    mask = np.zeros((SIDE, SIDE), dtype=bool)
    mask[:, : SIDE // 2] = True
    stem = Path(name).stem
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(f"images/{stem}{Path(name).suffix}", image)
        archive.writestr(f"masks/{stem}.png", png(mask))
    return buffer.getvalue()


def inflating_zip(count: int = 3) -> bytes:
    """A deflated calibration zip of `count` `inflate-` strips, each with a valid mask.

    Its entries expand to a few MB, well within the zip's own limit; the images inside inflate to
    `count` GiB.
    """
    image = tiff_inflating(1024, GiB)
    mask = png(np.zeros((1024, 1024), dtype=bool))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for n in range(count):
            archive.writestr(f"images/bomb{n}.tif", image)
            archive.writestr(f"masks/bomb{n}.png", mask)
    return buffer.getvalue()


def write_corpus(folder: Path) -> list[Path]:
    """Write every case into `folder`: images, and a `zip-` data set for each; returns the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, data in images():
        for path, content in ((folder / name, data), (folder / f"zip-{name}.zip", None)):
            path.write_bytes(content if content is not None else dataset_zip(name, data))
            written.append(path)
    written.append(folder / "zip-three-inflating-strips.zip")
    written[-1].write_bytes(inflating_zip())
    return written


if __name__ == "__main__":
    for path in write_corpus(Path(sys.argv[1] if len(sys.argv) > 1 else "hostile-corpus")):
        print(path, path.stat().st_size)
