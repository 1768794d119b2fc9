"""`/docs` and `/redoc` with Swagger UI and ReDoc served by the service, never from a CDN.

The assets come from the `fastapi-offline` package, which ships Swagger UI's and ReDoc's
distribution files; the pages are FastAPI's own. Machines without internet (hospitals, labs,
clusters) get working API docs.
"""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

from service.api.security_headers import CSP, page_policy

ASSETS_DIR = Path(fastapi_offline.__file__).parent / "static"
ASSETS_URL = "/docs-static"
# ReDoc's sidebar shows Redocly's logo from their CDN; the local icon takes its place. Relative
# to the /redoc page, so it also resolves behind a proxy's root path.
REDOC_REMOTE_LOGO = b"https://cdn.redoc.ly/redoc/logo-mini.svg"
REDOC_LOCAL_LOGO = f"{ASSETS_URL.lstrip('/')}/favicon.png".encode()


def redoc_script() -> bytes:
    """ReDoc's standalone bundle with its one remote image pointed at a local one."""
    script = (ASSETS_DIR / "redoc.standalone.js").read_bytes()
    return script.replace(REDOC_REMOTE_LOGO, REDOC_LOCAL_LOGO)


def docs_router(app: FastAPI) -> APIRouter:
    """The `/docs` and `/redoc` pages of `app`, and ReDoc's script."""
    router = APIRouter(include_in_schema=False)
    redoc = redoc_script()  # read once: about 1 MB, served on every /redoc visit

    @router.get("/docs", name="swagger-ui")
    def swagger_ui(request: Request) -> HTMLResponse:
        """Swagger UI for the OpenAPI document."""
        root = request.scope.get("root_path", "")
        page = get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            # Swagger UI would otherwise fetch a validity badge from validator.swagger.io.
            swagger_ui_parameters={"validatorUrl": None},
        )
        return _with_policy(page)

    @router.get("/redoc", name="redoc")
    def redoc_page(request: Request) -> HTMLResponse:
        """ReDoc for the OpenAPI document, with system fonts instead of Google's."""
        root = request.scope.get("root_path", "")
        page = get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        )
        # ReDoc (styled-components) writes its styles into <style> elements as it renders, and
        # runs its search index in a worker made from a blob: URL of its own bundle's code.
        return _with_policy(page, style_src="'self' 'unsafe-inline'", worker_src="'self' blob:")

    @router.get(f"{ASSETS_URL}/redoc.standalone.js", name="redoc-script")
    def redoc_js() -> Response:
        """ReDoc's bundle, served from memory with its remote logo made local."""
        return Response(redoc, media_type="text/javascript")

    return router


def _with_policy(page: HTMLResponse, **directives: str) -> HTMLResponse:
    """`page` with a CSP that allows its own inline scripts, by hash, and nothing else inline."""
    page.headers[CSP] = page_policy(bytes(page.body).decode(), **directives)
    return page


def install_docs(app: FastAPI) -> None:
    """Serve `/docs` and `/redoc` from local assets; create `app` with docs_url=redoc_url=None."""
    app.include_router(docs_router(app))  # before the mount, so ReDoc's script is the patched one
    app.mount(ASSETS_URL, StaticFiles(directory=ASSETS_DIR), name="docs-static")
