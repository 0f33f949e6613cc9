"""StructuredASGIHandler: Django's ASGIHandler with the request's context kept whole."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from contextlib import closing
from typing import TYPE_CHECKING, Any

from asgiref.sync import sync_to_async
from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler
from django.urls import set_script_prefix

from structured_signals._compat import (
    BaseExceptionGroup,
    TaskGroup,
    listen_for_disconnect,
    run_get_response,
    script_prefix,
)
from structured_signals._integration import options
from structured_signals._signal import upgrade

if TYPE_CHECKING:
    from django.http import HttpRequest, HttpResponseBase

__all__ = ("StructuredASGIHandler",)

Receive = Callable[[], Awaitable[Mapping[str, Any]]]
Send = Callable[[Mapping[str, Any]], Awaitable[None]]


class StructuredASGIHandler(ASGIHandler):
    """Django's ASGIHandler, carrying one context through the whole request.

    `request_started` receivers, middleware, the view and `request_finished`
    receivers all run in the request's own context, so what one of them sets
    in a ContextVar or an `asgiref.local.Local` the later ones see (#36714):
    Django up to 6.0 loses `request_started`'s async writes (gather) and runs
    the view in a task of its own, whose writes `request_finished` never sees.
    """

    def __init__(self) -> None:
        super().__init__()
        # Django sends these from places no subclass reaches (HttpResponse.close()
        # sends request_finished), so the signal objects themselves are upgraded.
        upgrade(signals.request_started, **options())
        upgrade(signals.request_finished, **options())

    async def handle(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        """Serve one HTTP request: read it, dispatch it, respond, finish it."""
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        with closing(body_file):
            set_script_prefix(script_prefix(self, scope))
            await signals.request_started.asend(sender=self.__class__, scope=scope)
            request, error_response = self.create_request(scope, body_file)
            if request is None:
                assert error_response is not None
                await self.send_response(error_response, send)
                await _close(error_response)
                return
            response = await self._respond_unless_disconnected(request, receive, send)
            if response is None:
                await signals.request_finished.asend(sender=self.__class__)
            else:
                await _close(response)

    async def _respond_unless_disconnected(
        self, request: HttpRequest, receive: Receive, send: Send
    ) -> HttpResponseBase | None:
        """Run the view and send its response; None if the client left first.

        The view runs in this task, not in one of its own, so that what the
        middleware and the view set stays in the request's context for
        `request_finished`. A disconnect cancels the view, as in Django.
        """
        response = None
        try:
            async with TaskGroup() as group:
                listener = group.create_task(self._listen_for_disconnect(receive))

                async def send_until_complete(message: Mapping[str, Any]) -> None:
                    await send(message)
                    # Once the last body chunk is out the response is complete:
                    # a disconnect now must not cancel what follows (Django 4.2's
                    # send_response() then closes the response, sending
                    # request_finished).
                    if message["type"] == "http.response.body" and not message.get("more_body"):
                        listener.cancel()

                response = await run_get_response(self, request)
                await self.send_response(response, send_until_complete)
                listener.cancel()
        except BaseExceptionGroup as errors:
            _, unexpected = errors.split(RequestAborted)
            if unexpected is not None:
                if len(unexpected.exceptions) == 1:
                    raise unexpected.exceptions[0]  # noqa: B904 -- the one error, itself
                raise unexpected from None
        return response

    async def _listen_for_disconnect(self, receive: Receive) -> None:
        # Invariant: the listener never fails in its first step. Under an eager
        # task factory (3.12+) it would fail inside create_task, and the
        # TaskGroup would leave a cancellation pending on this task (3.12 keeps
        # it after uncancel()) that hits the next await after the group.
        await asyncio.sleep(0)
        await listen_for_disconnect(self, receive)


async def _close(response: HttpResponseBase) -> None:
    # Django 4.2's send_response() closes the response itself; later ones don't.
    if not response.closed:
        await sync_to_async(response.close)()
