"""Where uploads wait while they arrive: one known folder, and 507 when its disk is full.

Starlette spools each uploaded file to a `SpooledTemporaryFile`, which moves to disk past
1 MiB, in the process's temporary folder: `TMPDIR`, or silently `/tmp` when `TMPDIR` cannot be
written the first time it is asked. A full disk there surfaced as FastAPI's 400 "There was an
error parsing the body", logged nowhere. Routes built with `SpoolingRoute` spool into the folder
`install_spooling` checked at start-up, and a full disk answers 507 and logs the folder.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Coroutine
from contextlib import aclosing
from pathlib import Path
from tempfile import SpooledTemporaryFile
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.routing import APIRoute
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import parse_options_header

from service.api.problems import ProblemError, answer_problem
from service.settings import Settings
from service.state.errors import FULL_ERRNOS

log = logging.getLogger(__name__)


class SpoolFolderUnusable(ValueError):
    """UNET_SPOOL_DIR cannot be created or written: the service does not start."""


class SpoolFull(HTTPException):
    """The spool folder's disk filled while an upload arrived.

    An HTTPException because FastAPI answers any other error raised while it reads a form with
    a 400; this one it passes on, to the handler `install_spooling` registers.
    """

    def __init__(self, folder: Path) -> None:
        super().__init__(507, f"the disk of the upload spool folder {folder} is full")
        self.folder = folder


def spool_folder(settings: Settings) -> Path:
    """The folder uploads spool to: UNET_SPOOL_DIR, else TMPDIR, else /tmp."""
    return settings.spool_dir or Path(os.environ.get("TMPDIR") or "/tmp")


def check_spool_folder(folder: Path) -> None:
    """Create `folder` if need be and make sure files can be made in it; a full disk only warns."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder) as probe:
            probe.write(b"\0")
            probe.flush()
    except OSError as error:
        if error.errno in FULL_ERRNOS:
            log.warning("the upload spool folder %s (UNET_SPOOL_DIR) is full", folder)
            return
        raise SpoolFolderUnusable(
            f"UNET_SPOOL_DIR: cannot write uploads to {folder}: {error.strerror}; "
            "point it at a writable folder"
        ) from None


def install_spooling(app: FastAPI, settings: Settings) -> None:
    """Check the spool folder now, spool `SpoolingRoute` uploads there and answer 507 when full."""
    folder = spool_folder(settings)
    check_spool_folder(folder)
    app.state.spool_dir = folder

    async def full(request: Request, error: Exception) -> Response:
        assert isinstance(error, SpoolFull)
        problem = ProblemError(
            507,
            "Upload spool full",
            "the disk the service spools uploads to (UNET_SPOOL_DIR) is full; retry later, "
            "or send a file under 1 MiB",
            slug="spool-disk-full",
        )
        return await answer_problem(request, problem)

    app.add_exception_handler(SpoolFull, full)


class SpoolingParser(MultiPartParser):
    """Starlette's multipart parser, with each file spooled in `spool_dir`."""

    def __init__(self, *args: Any, spool_dir: Path | None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.spool_dir = spool_dir

    def on_headers_finished(self) -> None:
        """Start a file part as Starlette does, then give it a file in the spool folder."""
        super().on_headers_finished()
        upload = self._current_part.file
        if upload is not None and self.spool_dir is not None:
            # Starlette's SpooledTemporaryFile takes no folder; nothing was written to it yet.
            # The form closes it when the request is done, or the parser on an error.
            spooled: SpooledTemporaryFile[bytes] = SpooledTemporaryFile(  # noqa: SIM115
                max_size=self.spool_max_size, dir=str(self.spool_dir)
            )
            self._files_to_close_on_error[-1].close()
            self._files_to_close_on_error[-1] = spooled
            upload.file = spooled  # type: ignore[assignment]


class SpoolingRequest(Request):
    """A request whose multipart form spools into the app's spool folder."""

    async def _get_form(
        self,
        *,
        max_files: int | float = 1000,
        max_fields: int | float = 1000,
        max_part_size: int = 1024 * 1024,
    ) -> FormData:
        content_type, _ = parse_options_header(self.headers.get("Content-Type"))
        if self._form is not None or content_type != b"multipart/form-data":
            return await super()._get_form(
                max_files=max_files, max_fields=max_fields, max_part_size=max_part_size
            )
        folder: Path | None = getattr(self.app.state, "spool_dir", None)
        try:
            async with aclosing(self.stream()) as stream:
                parser = SpoolingParser(
                    self.headers,
                    stream,
                    max_files=max_files,
                    max_fields=max_fields,
                    max_part_size=max_part_size,
                    spool_dir=folder,
                )
                self._form = await parser.parse()
        except MultiPartException as error:
            raise HTTPException(status_code=400, detail=error.message) from None
        except OSError as error:
            if error.errno not in FULL_ERRNOS:
                raise
            where = folder or Path(tempfile.gettempdir())
            log.warning(
                "refused an upload to %s: the spool folder %s is full (%s); free space there "
                "or point UNET_SPOOL_DIR elsewhere",
                self.url.path,
                where,
                error.strerror,
            )
            raise SpoolFull(where) from None
        return self._form


class SpoolingRoute(APIRoute):
    """An API route whose uploads spool into the spool folder (`install_spooling`)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """FastAPI's handler, given a `SpoolingRequest` in place of the plain request."""
        handle = super().get_route_handler()

        async def spooling(request: Request) -> Response:
            return await handle(SpoolingRequest(request.scope, request.receive))

        return spooling
