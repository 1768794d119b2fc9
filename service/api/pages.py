"""The threshold explorer at `/`: one HTML page and its assets, served by the service itself."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).parent / "static"
STATIC_URL = "/static"

router = APIRouter(include_in_schema=False)


@router.get("/", name="explorer")
def explorer() -> FileResponse:
    """The threshold explorer page; it uses only the public HTTP API."""
    # no-cache: a browser revalidates, so a new release's page never runs against stale assets.
    return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


def install_pages(app: FastAPI) -> None:
    """Serve the explorer at `/` and its CSS, JavaScript and icon under `/static`."""
    app.include_router(router)
    app.mount(STATIC_URL, StaticFiles(directory=STATIC_DIR), name="static")
