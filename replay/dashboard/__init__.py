"""The web dashboard: a mountable ASGI app (starlette) and a command to serve it (uvicorn).

Needs the ``dashboard`` extra: ``pip install 'replay[dashboard]'``.

Example::

    from replay.dashboard import create_app, serve

    serve(app)                                   # http://127.0.0.1:8000/
    serve(app, host="0.0.0.0", token=secret)     # any other address needs a token
"""

try:
    import starlette  # noqa: F401
    import uvicorn  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise ImportError(
        f"replay.dashboard needs starlette and uvicorn ({exc.name} is missing): "
        "pip install 'replay[dashboard]'"
    ) from exc

from replay.dashboard._app import create_app as create_app
from replay.dashboard._serve import check_address as check_address
from replay.dashboard._serve import serve as serve

__all__ = ("check_address", "create_app", "serve")
