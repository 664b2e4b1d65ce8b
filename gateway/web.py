"""The browser side, served from the package so it works offline: the web app at `/`, its files
and the vendored libraries (GraphiQL's and the app's) under `/static/`, and GraphiQL's page.

The libraries live in `gateway/static/vendor/<package>@<version>/` (refreshed by
`scripts/vendor-web`, each with its license): a new version is a new URL, so they are cached for
a year as immutable. The app's own files keep their names across changes, so a browser
revalidates them (ETag) on each load.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import NotModifiedResponse, StaticFiles
from starlette.types import Scope

STATIC_DIR = Path(__file__).parent / "static"
APP_INDEX = STATIC_DIR / "app" / "index.html"
GRAPHIQL_PAGE = STATIC_DIR / "graphiql.html"

IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"

# Explicit, not the platform's mimetypes table (which maps .js to text/plain on some systems,
# and a browser refuses to run an ES module served so).
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".md": "text/markdown; charset=utf-8",
    "": "text/plain; charset=utf-8",  # LICENSE
}


def cache_control(relative_path: str) -> str:
    """Versioned library files never change under their URL; the app's own files may."""
    return IMMUTABLE if relative_path.startswith("vendor/") else REVALIDATE


def media_type(path: str | os.PathLike[str]) -> str:
    return MEDIA_TYPES.get(Path(path).suffix.lower(), "application/octet-stream")


class StaticAssets(StaticFiles):
    """Starlette's StaticFiles (ETag, Last-Modified, 304s, no escape from the folder) with our
    media types, cache headers and `nosniff`."""

    def file_response(
        self,
        full_path: str | os.PathLike[str],
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        relative = Path(full_path).resolve().relative_to(STATIC_DIR.resolve()).as_posix()
        response = FileResponse(
            full_path,
            status_code=status_code,
            stat_result=stat_result,
            media_type=media_type(full_path),
        )
        response.headers["Cache-Control"] = cache_control(relative)
        response.headers["X-Content-Type-Options"] = "nosniff"
        if self.is_not_modified(response.headers, Request(scope).headers):
            return NotModifiedResponse(response.headers)
        return response


@cache
def graphiql_page() -> str:
    """GraphiQL's page, its scripts and styles served from /static/vendor/."""
    return GRAPHIQL_PAGE.read_text(encoding="utf-8")


async def app_index(request: Request) -> Response:
    response = FileResponse(APP_INDEX, media_type=media_type(APP_INDEX))
    response.headers["Cache-Control"] = REVALIDATE
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def web_routes(*, web_app: bool) -> list[BaseRoute]:
    """`/static/` always (GraphiQL's page needs it); the app at `/` when it is on."""
    routes: list[BaseRoute] = [Mount("/static", StaticAssets(directory=STATIC_DIR), name="static")]
    if web_app:
        routes.append(Route("/", app_index, methods=["GET", "HEAD"]))
    return routes
