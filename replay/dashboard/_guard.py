"""Who may use the dashboard: the token, and the checks that stand in for it on loopback.

With a token, every request must carry it: an ``Authorization: Bearer`` header
(scripts), or the cookie that the first page load with ``?token=`` sets (the
browser; the page's own API calls then carry the cookie). The cookie is
HttpOnly (the page's scripts never see the token) and SameSite=Strict (another
site's page cannot make the browser send it).

Without a token the dashboard trusts whoever reaches it, which is only safe on
loopback, so it answers only requests addressed to a loopback name: a web page
that points a DNS name of its own at 127.0.0.1 (DNS rebinding) gets a 403.

Either way, a POST must be JSON (a cross-site HTML form cannot send that
without the browser asking first, which the dashboard never allows) and, when
the browser says where it comes from (``Origin``), come from the dashboard's
own origin.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ("COOKIE", "Guard", "is_loopback_host")

COOKIE = "replay_dashboard_token"


def is_loopback_host(host: str) -> bool:
    """Whether a ``Host`` header value (with or without a port) names this machine."""
    host = host.strip().lower()
    if host.startswith("["):
        name = host[1 : host.find("]")]
    else:
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class Guard:
    """ASGI middleware that enforces the token (or the loopback checks) on every request.

    Args:
        app: the dashboard's routes.
        token: the token every request must carry, or None for loopback-only use.
    """

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "")
        refusal = self._refusal(scope, headers, host)
        if refusal is not None:
            await _respond(send, *refusal)
            return
        if self.token is not None and not self._has_token(headers):
            query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
            if _is_page(scope) and scope["method"] == "GET" and self._same(query.get("token")):
                await self._set_cookie(scope, send, query)
                return
            await _respond(
                send,
                401,
                "this dashboard needs its token: open it once with ?token=TOKEN, "
                "or send the header Authorization: Bearer TOKEN",
                [(b"www-authenticate", b"Bearer")],
            )
            return
        await self.app(scope, receive, send)

    def _refusal(self, scope: Scope, headers: dict[str, str], host: str) -> tuple[int, str] | None:
        if self.token is None and not is_loopback_host(host):
            return 403, (
                f"this dashboard has no token, so it only answers on loopback (127.0.0.1, "
                f"localhost), not on {host!r}: give it a token to serve it on another address"
            )
        if scope["method"] == "POST":
            content_type = headers.get("content-type", "").split(";")[0].strip().lower()
            if content_type != "application/json":
                return 415, "POST requests must send Content-Type: application/json"
            origin = headers.get("origin")
            if origin is not None and urlsplit(origin).netloc.lower() != host.lower():
                return 403, f"cross-origin request refused: Origin {origin!r} is not this dashboard"
        return None

    def _same(self, given: str | None) -> bool:
        assert self.token is not None
        return given is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def _has_token(self, headers: dict[str, str]) -> bool:
        scheme, _, value = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and self._same(value.strip()):
            return True
        cookie = SimpleCookie()
        try:
            cookie.load(headers.get("cookie", ""))
        except Exception:  # noqa: BLE001 - a malformed cookie header is no token
            return False
        return COOKIE in cookie and self._same(cookie[COOKIE].value)

    async def _set_cookie(self, scope: Scope, send: Send, query: dict[str, str]) -> None:
        """Trade a valid ``?token=`` for the cookie, and drop it from the address bar."""
        assert self.token is not None
        root = scope.get("root_path", "")
        query.pop("token")
        location = scope["path"] + (f"?{urlencode(query)}" if query else "")
        secure = "; Secure" if scope.get("scheme") == "https" else ""
        cookie = f"{COOKIE}={self.token}; Path={root or '/'}; HttpOnly; SameSite=Strict{secure}"
        await send(
            {
                "type": "http.response.start",
                "status": 303,
                "headers": [
                    (b"location", location.encode("latin-1")),
                    (b"set-cookie", cookie.encode("latin-1")),
                    (b"cache-control", b"no-store"),
                    (b"content-length", b"0"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b""})


def _is_page(scope: Scope) -> bool:
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return not path.startswith("/api/")


async def _respond(send: Send, status: int, message: str, headers: list[tuple[bytes, bytes]] = []) -> None:  # noqa: B006
    body: Any = json.dumps({"error": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
