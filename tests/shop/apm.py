"""An APM that wraps Django's ASGI entry point, as ddtrace's patch(django=True) does.

Run as `python -m shop.apm`: the wrapping happens before Django is set up, then
the project's asgi.py (SHOP_ASGI) is imported; prints, as JSON, the classes an
HTTP request passes through and whether the wrapper saw the request.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import json
from typing import TYPE_CHECKING, Any

from django.core import asgi as django_asgi

if TYPE_CHECKING:
    from collections.abc import Callable

TRACED: list[str] = []


class TraceMiddleware:
    """Records every HTTP request it passes to the application it wraps."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        TRACED.append(scope["path"])
        await self.app(scope, receive, send)


def traced(get_asgi_application: Callable[[], Any]) -> Callable[[], Any]:
    @functools.wraps(get_asgi_application)
    def wrapper() -> TraceMiddleware:
        return TraceMiddleware(get_asgi_application())

    return wrapper


async def serve_one(application: Any) -> int:
    """One GET / through the application; the response status."""
    sent: list[dict[str, Any]] = []
    requests = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> dict[str, Any]:
        if requests:
            return requests.pop()
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/",
        "raw_path": b"/",
        "query_string": b"",
        "headers": [],
        "server": ("127.0.0.1", 80),
    }
    await application(scope, receive, send)
    status: int = sent[0]["status"]
    return status


def main() -> dict[str, Any]:
    django_asgi.get_asgi_application = traced(django_asgi.get_asgi_application)
    application = importlib.import_module("shop.asgi").application
    route = [type(application).__name__]
    inner = getattr(application, "app", None)
    if inner is not None:
        route.append(type(inner).__name__)
    status = asyncio.run(serve_one(application))
    return {"route": route, "traced": TRACED, "status": status}


if __name__ == "__main__":
    print(json.dumps(main()))
