from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from django.http import JsonResponse, StreamingHttpResponse
from django.urls import path

from demo_project.state import EVENTS, EVENTS_LOCK, Connection, connection, header_id, record, seen

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from django.http import HttpRequest


async def whoami(request: HttpRequest) -> JsonResponse:
    """What the view sees of the state request_started and the middleware set."""
    return JsonResponse({"stage": "view", **seen()})


def whoami_sync(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"stage": "sync view", **seen()})


async def open_connection(request: HttpRequest) -> JsonResponse:
    """Open a 'connection' in context, for request_finished to close."""
    connection.set(Connection(owner=header_id.get("<no id>")))
    return JsonResponse({"stage": "view", **seen()})


async def stream(request: HttpRequest) -> StreamingHttpResponse:
    connection.set(Connection(owner=header_id.get("<no id>")))

    async def chunks() -> AsyncIterator[bytes]:
        for part in (b"one ", b"two ", b"three"):
            await asyncio.sleep(0)
            yield part

    return StreamingHttpResponse(chunks())


async def wait_for_disconnect(request: HttpRequest) -> JsonResponse:
    """Open a connection, then wait until the client goes away."""
    connection.set(Connection(owner=header_id.get("<no id>")))
    record(header_id.get(None), {"stage": "view started", **seen()})
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        record(header_id.get(None), {"stage": "view cancelled", **seen()})
        raise
    return JsonResponse({"stage": "view", **seen()})


async def events(request: HttpRequest) -> JsonResponse:
    """Every event so far; with ?take=1 they are also forgotten (for long runs)."""
    with EVENTS_LOCK:
        answer = {key: list(value) for key, value in EVENTS.items()}
        if request.GET.get("take"):
            EVENTS.clear()
    return JsonResponse(answer)


urlpatterns = [
    path("whoami/", whoami),
    path("whoami-sync/", whoami_sync),
    path("connection/", open_connection),
    path("stream/", stream),
    path("wait/", wait_for_disconnect),
    path("events/", events),
]
