"""The request state the lifecycle has to carry, and who records what."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from typing import TYPE_CHECKING, Any

from asgiref.local import Local
from django.core.signals import request_finished, request_started
from django.utils.decorators import async_only_middleware

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from django.http import HttpRequest, HttpResponseBase

# Set by a sync request_started receiver, from the ASGI scope.
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id")
# Set by an async request_started receiver, from the ASGI scope.
request_local = Local()
# Set by the middleware, from the request: what the request really is.
header_id: contextvars.ContextVar[str] = contextvars.ContextVar("header_id")
# Set by a second async request_started receiver.
started_at: contextvars.ContextVar[float] = contextvars.ContextVar("started_at")
# Opened by the /connection/ view, closed by request_finished.
connection: contextvars.ContextVar[Connection] = contextvars.ContextVar("connection")

# Invariant: written only under EVENTS_LOCK (sync receivers run in threads).
EVENTS: dict[str, list[dict[str, Any]]] = {}
EVENTS_LOCK = threading.Lock()


class Connection:
    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.closed_by: list[str] = []


def id_from_scope(scope: dict[str, Any]) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"x-request-id":
            return str(value.decode())
    return None


def record(request: str | None, event: dict[str, Any]) -> None:
    with EVENTS_LOCK:
        EVENTS.setdefault(request or "<no id>", []).append(event)


def seen() -> dict[str, Any]:
    """What the current context holds, as every stage reports it."""
    open_connection = connection.get(None)
    return {
        "request_id": request_id.get(None),
        "local_id": getattr(request_local, "request_id", None),
        "header_id": header_id.get(None),
        "connection": None if open_connection is None else open_connection.owner,
    }


def started_sync(scope: dict[str, Any], **kwargs: Any) -> None:
    identifier = id_from_scope(scope)
    if identifier is not None:
        request_id.set(identifier)


async def started_async(scope: dict[str, Any], **kwargs: Any) -> None:
    await asyncio.sleep(0)
    identifier = id_from_scope(scope)
    if identifier is not None:
        request_local.request_id = identifier


async def started_clock(**kwargs: Any) -> None:
    started_at.set(time.monotonic())


def finished(stage: str) -> dict[str, Any]:
    event = {"stage": stage, **seen()}
    open_connection = connection.get(None)
    if open_connection is not None:
        open_connection.closed_by.append(stage)
    record(header_id.get(None), event)
    return event


def finished_sync(**kwargs: Any) -> None:
    finished("request_finished (sync)")


async def finished_async(**kwargs: Any) -> None:
    await asyncio.sleep(0)
    finished("request_finished (async)")


def connect_receivers() -> None:
    request_started.connect(started_sync, dispatch_uid="e2e.started_sync")
    request_started.connect(started_async, dispatch_uid="e2e.started_async")
    request_started.connect(started_clock, dispatch_uid="e2e.started_clock")
    request_finished.connect(finished_sync, dispatch_uid="e2e.finished_sync")
    request_finished.connect(finished_async, dispatch_uid="e2e.finished_async")


@async_only_middleware
def remember_header_middleware(
    get_response: Callable[[HttpRequest], Awaitable[HttpResponseBase]],
) -> Callable[[HttpRequest], Awaitable[HttpResponseBase]]:
    async def middleware(request: HttpRequest) -> HttpResponseBase:
        identifier = request.headers.get("x-request-id")
        if identifier is not None:
            header_id.set(identifier)
        record(identifier, {"stage": "middleware", **seen()})
        return await get_response(request)

    return middleware
