"""The playground (/ui) and the traffic dashboard (/ui/traffic): static pages, served as files.

The pages hold no secrets and no data: their scripts call the API (/v1/models, /v1/route,
/v1/chat/completions, /v1/traffic) with the key the user types, kept in the tab's
sessionStorage. Nothing here runs on the API's requests: the routes only answer GETs under /ui.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

UI_DIR = Path(__file__).resolve().parent / "ui"
PAGES = {"/ui": "playground.html", "/ui/traffic": "traffic.html"}
# Scripts and styles from the gateway only (no inline script, nothing from elsewhere: the pages
# work offline); API calls to the same origin; the pages may not be framed.
PAGE_HEADERS = {
    "content-security-policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",  # revalidated each time (by ETag): a new version shows at once
}


def add_ui(app: FastAPI) -> None:
    """Mount the pages and their static files on the gateway app."""
    app.mount("/ui/static", StaticFiles(directory=UI_DIR / "static"), name="ui-static")

    def page(filename: str):
        async def serve() -> FileResponse:
            return FileResponse(UI_DIR / filename, media_type="text/html", headers=PAGE_HEADERS)

        return serve

    for path, filename in PAGES.items():
        app.add_api_route(path, page(filename), methods=["GET"], include_in_schema=False, name=filename)

    @app.get("/", include_in_schema=False)
    async def home() -> RedirectResponse:
        return RedirectResponse("/ui")
