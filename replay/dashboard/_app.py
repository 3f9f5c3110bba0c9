"""``create_app``: the dashboard as a Starlette app, to serve or mount in your own."""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from replay.app import App
from replay.dashboard._api import ApiError, api_routes
from replay.dashboard._guard import Guard

__all__ = ("create_app",)

STATIC = Path(__file__).parent / "static"
# The page's own files only: no inline script, nothing from another origin.
_PAGE_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'self'; form-action 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}


async def _page(request: Request) -> Response:
    # <base> makes the page's relative URLs work wherever the app is mounted.
    base = request.scope.get("root_path", "").rstrip("/") + "/"
    html = (STATIC / "index.html").read_text(encoding="utf-8").replace("{{base}}", base)
    return HTMLResponse(html, headers=_PAGE_HEADERS)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return JSONResponse({"error": exc.message}, status_code=exc.status)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = {404: f"nothing at {request.url.path}", 405: f"{request.method} is not allowed here"}
    return JSONResponse(
        {"error": message.get(exc.status_code, exc.detail)}, status_code=exc.status_code, headers=exc.headers
    )


def create_app(app: App, *, token: str | None = None) -> Starlette:
    """The dashboard of ``app``'s store as an ASGI app: the page and its JSON API.

    Serve it with ``serve``, or mount it in your own ASGI app
    (``Mount("/replay", create_app(app, token=...))``). It uses ``app``'s store
    from the event loop that serves it.

    Args:
        app: the replay app whose runs to show (its store, clock and workflows).
        token: the secret every request must carry (``Authorization: Bearer``,
            or the cookie a first page load with ``?token=`` sets). Without one,
            the dashboard answers only requests addressed to a loopback name.

    Returns:
        A Starlette app.

    Raises:
        ValueError: ``token`` is given but empty.
    """
    if token is not None and (not isinstance(token, str) or not token.strip()):
        raise ValueError("a dashboard token must be a non-empty string")
    routes = [
        Route("/", _page, methods=["GET"]),
        *api_routes(app),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(Guard, token=token)],
        exception_handlers={ApiError: _api_error, HTTPException: _http_error},
    )
