"""Uploads: read within their size limit; an image upload as the segment use case reads it."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import UploadFile

from service.api.problems import ProblemError

CHUNK = 1 << 20


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


@dataclass(frozen=True)
class UploadedImage:
    """A request's image upload as the segment use case reads it (`ImageSource`)."""

    upload: UploadFile
    limit: int  # UNET_MAX_UPLOAD_BYTES

    @property
    def name(self) -> str:
        """The client's file name."""
        return self.upload.filename or "image"

    async def read(self) -> bytes:
        """The uploaded bytes, or 413 past the limit and 422 when empty."""
        return await read_upload(self.upload, self.limit, "image")
