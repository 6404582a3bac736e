"""The health commission's governance console: one page at ``/`` and its files under ``/console/``.

The page is plain HTML, CSS and JavaScript from this package (no CDN, no build step); it speaks only
to ``/api/v1`` with the account token pasted at log-in. It is not an API endpoint, so it is neither in
the OpenAPI schema nor in ``ACCESS``: the API behind it enforces the roles.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from federation.pages import SHARED_STATIC

__all__ = ["CONSOLE_DIR", "CSP", "mount_console"]

CONSOLE_DIR = Path(__file__).resolve().parents[1] / "console"
# Everything the page loads comes from this server: no CDN, no external font, no inline script.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
            "X-Frame-Options": "DENY"}


def mount_console(app: FastAPI) -> None:
    """Serve the console at ``/`` (and ``/console/``) and its static files under ``/console/``, with
    the files it shares with the clinic's page (``federation.pages``)."""

    @app.get("/", include_in_schema=False)
    def console() -> FileResponse:
        return FileResponse(CONSOLE_DIR / "index.html", media_type="text/html; charset=utf-8", headers=_HEADERS)

    # The console's own files, then those it shares with the clinic's page (the model-card renderer).
    app.mount("/console", StaticFiles(directory=CONSOLE_DIR, packages=[SHARED_STATIC], html=True), name="console")
