"""A `/v2` request's body, spooled as it arrives, as v1's uploads are.

Starlette's `request.body()` keeps every chunk in memory until the last arrives, so a hundred
slow 100 MB tensors would hold 10 GB while they trickle in. Here a body past 1 MiB goes to a
temporary file in the spool folder (UNET_SPOOL_DIR, `service.api.spool`) while it arrives, and is
read back whole only once complete, when the tensor is needed; a full disk answers 507.
The size limit is the body-limit middleware's, which counts the bytes before they get here.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from tempfile import SpooledTemporaryFile

from anyio import to_thread
from fastapi import Request

from service.api.oip.errors import OipError
from service.state.errors import FULL_ERRNOS

log = logging.getLogger(__name__)
IN_MEMORY_BYTES = 1 << 20  # as Starlette spools multipart files: small bodies never touch disk


def _on_disk(spool: SpooledTemporaryFile[bytes]) -> bool:
    return bool(getattr(spool, "_rolled", True))


async def read_body(request: Request) -> bytes:
    """The whole body, spooled in the app's spool folder while it arrives; 507 when full."""
    folder: Path | None = getattr(request.app.state, "spool_dir", None)
    try:
        with SpooledTemporaryFile(
            max_size=IN_MEMORY_BYTES, dir=None if folder is None else str(folder)
        ) as spool:
            async for chunk in request.stream():
                if _on_disk(spool):
                    await to_thread.run_sync(spool.write, chunk)  # disk writes leave the loop
                else:
                    spool.write(chunk)
            spool.seek(0)
            if _on_disk(spool):
                return await to_thread.run_sync(spool.read)
            return spool.read()
    except OSError as error:
        if error.errno not in FULL_ERRNOS:
            raise
        where = folder or Path(tempfile.gettempdir())
        log.warning(
            "refused a /v2 request body: the spool folder %s is full (%s); free space there "
            "or point UNET_SPOOL_DIR elsewhere",
            where,
            error.strerror,
        )
        raise OipError(
            507,
            f"the disk the service spools request bodies to ({where}, UNET_SPOOL_DIR) is full; "
            "retry later, or send less than 1 MiB",
        ) from None
