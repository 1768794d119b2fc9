"""Compressed TIFF strips and tiles inflated with a bound, streaming, before any decoder runs.

A TIFF header declares each strip's or tile's decoded size (rows x columns x samples x bytes), but
its compressed bytes may inflate to far more: a 1 MB deflate strip of a 1024 x 1024 image can hold
2 GiB, and tifffile inflates a segment whole before cutting it to size. So every segment of a
codec tifffile would run here (deflate, LZMA, PackBits) is first inflated in 1 MiB pieces that are
counted and dropped, and refused the moment it passes its declared size: memory stays at a piece
and time at the declared size, whatever the data holds. Other codecs (LZW, JPEG, ...), and
PackBits strips too large for tifffile's pure-Python decoder, are not run by tifffile at all:
Pillow's libtiff decodes them into buffers of the declared strip size.
"""

from __future__ import annotations

import lzma
import zlib
from collections.abc import Iterator
from typing import Any

import tifffile

from model.errors import InflationError

PIECE = 1 << 20  # compressed bytes read, and inflated bytes produced, per step
NONE = 1
DEFLATE = (8, 32946, 50013)  # Adobe deflate, the old deflate code, PixTIFF's
LZMA = 34925
PACKBITS = 32773
BOUNDED = (NONE, *DEFLATE, LZMA, PACKBITS)  # what tifffile may decode here
# tifffile's own PackBits decoder (pure Python) builds a list of ints, 8 bytes per decoded byte:
# past this segment size, Pillow's C decoder takes the image instead.
PACKBITS_SEGMENT_BYTES = 4 << 20
_REVERSED = bytes(int(f"{byte:08b}"[::-1], 2) for byte in range(256))  # FillOrder 2's bytes


def segment_bytes(page: tifffile.TiffPage) -> int:
    """The most bytes one strip or tile of `page` may decode to, as its header declares them."""
    if page.dtype is None:
        return 0
    samples = page.samplesperpixel if page.planarconfig == 1 else 1
    if page.is_tiled:
        area = page.tiledepth * page.tilelength * page.tilewidth
    else:
        area = min(page.rowsperstrip, page.imagelength) * page.imagewidth  # one plane's rows
    # Packed samples (1-bit, 12-bit) take less than a byte each; the dtype's size bounds them.
    return int(area * samples * page.dtype.itemsize)


def tifffile_may_decode(page: tifffile.TiffPage) -> bool:
    """Whether tifffile decodes `page` within its declared size once `check_segments` passed."""
    if page.compression == PACKBITS:
        return segment_bytes(page) <= PACKBITS_SEGMENT_BYTES
    return page.compression in BOUNDED


def check_segments(page: tifffile.TiffPage) -> None:
    """InflationError naming the first strip or tile that inflates past its declared size.

    Only for codecs in `BOUNDED`; uncompressed segments need no check.
    """
    if page.compression == NONE:
        return
    bound = segment_bytes(page)
    kind = "tile" if page.is_tiled else "strip"
    inflate = _INFLATERS[page.compression]
    handle = page.parent.filehandle
    segments = zip(page.dataoffsets, page.databytecounts, strict=False)  # tifffile pairs them so
    for index, (offset, count) in enumerate(segments):
        if not offset or not count:
            continue  # a segment the file leaves out: tifffile fills it, nothing to inflate
        if page.compression == PACKBITS and count > bound + bound // 128 + 2:
            # All-literal runs need one header byte per 128: anything more is padding (no-op
            # headers) that only spends time in a pure-Python loop, here and in tifffile.
            raise InflationError(
                f"{kind} {index} holds {count} bytes, more than PackBits needs for the {bound} "
                "bytes its header declares"
            )
        pieces = _pieces(handle, offset, count, reverse=page.fillorder == 2)
        produced = inflate(pieces, bound)
        if produced > bound:
            raise InflationError(
                f"{kind} {index} inflates to more than the {bound} bytes its header declares"
            )


def _pieces(handle: Any, offset: int, count: int, reverse: bool) -> Iterator[bytes]:
    """The segment's compressed bytes, PIECE at a time, from the TIFF's own file handle.

    `reverse`: the file stores each byte's bits in reverse order (FillOrder 2), and tifffile
    restores them before it inflates; so must the count.
    """
    handle.seek(offset)
    while count > 0:
        piece = handle.read(min(PIECE, count))
        if not piece:
            return  # truncated file: tifffile reports it when it decodes
        count -= len(piece)
        yield piece.translate(_REVERSED) if reverse else piece


def _deflate(pieces: Iterator[bytes], bound: int) -> int:
    """Bytes a zlib stream inflates to, counted up to just past `bound`; as tifffile reads it."""
    inflater = zlib.decompressobj()
    produced = 0
    try:
        for piece in pieces:
            data = piece
            while data and not inflater.eof and produced <= bound:
                produced += len(inflater.decompress(data, PIECE))
                data = inflater.unconsumed_tail
            if inflater.eof or produced > bound:
                return produced
        while not inflater.eof and produced <= bound:  # output held back by the last step
            out = inflater.decompress(b"", PIECE)
            if not out:
                break
            produced += len(out)
    except zlib.error:
        pass  # corrupt data: tifffile refuses it with its own reason
    return produced


def _lzma(pieces: Iterator[bytes], bound: int) -> int:
    """Bytes LZMA/XZ data inflates to, concatenated streams included, counted up to past `bound`."""
    inflater = lzma.LZMADecompressor()
    produced = 0
    try:
        for piece in pieces:
            data = piece
            while data and produced <= bound:
                produced += len(inflater.decompress(data, PIECE))
                data = b""
                while not inflater.eof and not inflater.needs_input and produced <= bound:
                    produced += len(inflater.decompress(b"", PIECE))
                if inflater.eof:  # `lzma.decompress` goes on with the next stream, so do we
                    data = inflater.unused_data
                    inflater = lzma.LZMADecompressor()
    except lzma.LZMAError:
        pass  # corrupt data, or trailing bytes after a stream: as tifffile sees it
    return produced


def _packbits(pieces: Iterator[bytes], bound: int) -> int:
    """Bytes PackBits data expands to, from its run headers alone, counted up to past `bound`."""
    produced, skip = 0, 0
    for piece in pieces:
        i, size = skip, len(piece)
        while i < size and produced <= bound:
            header = piece[i]
            if header < 128:  # a literal run of header + 1 bytes follows
                produced += header + 1
                i += header + 2
            elif header > 128:  # one byte repeated 257 - header times
                produced += 257 - header
                i += 2
            else:  # 128: no operation
                i += 1
        if produced > bound:
            break
        skip = i - size
    return produced


_INFLATERS = {**dict.fromkeys(DEFLATE, _deflate), LZMA: _lzma, PACKBITS: _packbits}
