"""Uploaded images: size limits, and decoding on the event loop or, when large, off it."""

from __future__ import annotations

import numpy as np
from anyio import to_thread
from fastapi import UploadFile

from model.data.decoding import image_from_bytes, read_header
from model.errors import DatasetError, ImageTooLargeError
from service.api.problems import ProblemError
from service.inference.registry import ServedModel
from service.settings import Settings

CHUNK = 1 << 20
# Decoding a 256 x 256 PNG takes under a millisecond, less than what handing it to a thread and
# back costs under load; larger images (declared in their header) decode in a worker thread.
INLINE_PIXELS = 512 * 512


async def read_upload(
    upload: UploadFile, limit: int, what: str, setting: str = "UNET_MAX_UPLOAD_BYTES"
) -> bytes:
    """The uploaded bytes, or 413 past `limit` (named by `setting`) and 422 when empty."""
    chunks, size = [], 0
    while chunk := await upload.read(CHUNK):
        size += len(chunk)
        if size > limit:
            raise ProblemError(
                413,
                "Upload too large",
                f"{what} {upload.filename!r} is larger than the {limit} byte limit "
                f"({setting}); send a smaller file",
                slug="upload-too-large",
            )
        chunks.append(chunk)
    if size == 0:
        raise ProblemError(
            422, "Empty upload", f"{what} {upload.filename!r} is empty", slug="empty-upload"
        )
    return b"".join(chunks)


async def decode_image(upload: UploadFile, served: ServedModel, settings: Settings) -> np.ndarray:
    """The uploaded image as the model's (C, H, W) float input; 413 or 422 when it cannot be."""
    data = await read_upload(upload, settings.max_upload_bytes, "image")
    return await decode_bytes(data, upload.filename or "image", served, settings)


async def decode_bytes(
    data: bytes, name: str, served: ServedModel, settings: Settings
) -> np.ndarray:
    """An encoded image file as the model's (C, H, W) float input; 413 or 422 when it cannot be."""

    def decoded() -> np.ndarray:
        return image_from_bytes(data, served.input, name, settings.max_image_pixels)

    try:
        header = read_header(data, name)
        if header.width * header.height <= INLINE_PIXELS:
            return decoded()
        return await to_thread.run_sync(decoded)
    except ImageTooLargeError as error:
        raise ProblemError(413, "Image too large", str(error), slug="image-too-large") from None
    except DatasetError as error:
        raise ProblemError(422, "Unreadable image", str(error), slug="unreadable-image") from None
