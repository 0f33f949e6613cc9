"""Django ticket #36714, side by side: Django's own pieces against structured_signals.

Part 1 serves demo_project (demo/demo_project) under uvicorn on 127.0.0.1,
first with Django's ASGIHandler, then with StructuredASGIHandler, sends real
requests and prints what each stage of a request saw. Part 2 dispatches one
signal per row through `django.dispatch.Signal` and through
`StructuredSignal` and prints what the caller sees afterwards.
"""

from __future__ import annotations

import asyncio
import contextvars
import socket
import time
from typing import TYPE_CHECKING, Any

import django
import httpx
from demo_project.serve import uvicorn
from django.conf import settings
from django.dispatch import Signal
from django.utils import translation

from structured_signals import StructuredSignal

if TYPE_CHECKING:
    from collections.abc import Callable

settings.configure()
django.setup()

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id")
user: contextvars.ContextVar[str] = contextvars.ContextVar("user")
span: contextvars.ContextVar[str] = contextvars.ContextVar("span", default="request")


async def set_request_id(**kwargs: Any) -> None:
    request_id.set("req-42")


def set_user(**kwargs: Any) -> None:
    user.set("alice")


def async_receiver_via_asend(signal_class: type[Signal]) -> str:
    signal = signal_class()
    signal.connect(set_request_id)

    async def view() -> str:
        await signal.asend(sender=None)
        return request_id.get("<unset>")

    return asyncio.run(view())


def async_receiver_via_send(signal_class: type[Signal]) -> str:
    signal = signal_class()
    signal.connect(set_request_id)

    def view() -> str:
        signal.send(sender=None)
        return request_id.get("<unset>")

    return contextvars.Context().run(view)


def sync_and_async_receivers_via_asend(signal_class: type[Signal]) -> str:
    signal = signal_class()
    signal.connect(set_user)
    signal.connect(set_request_id)

    async def view() -> str:
        await signal.asend(sender=None)
        return f"{user.get('<unset>')}, {request_id.get('<unset>')}"

    return asyncio.run(view())


class ArrayLike:
    """Compares like a numpy array: `a != b` gives an array whose truth is ambiguous."""

    def __ne__(self, other: object) -> Any:
        return _Ambiguous()


class _Ambiguous:
    def __bool__(self) -> bool:
        raise ValueError("The truth value of an array with more than one element is ambiguous")


def array_in_the_callers_context(signal_class: type[Signal]) -> str:
    signal = signal_class()
    signal.connect(set_request_id)
    embeddings: contextvars.ContextVar[ArrayLike] = contextvars.ContextVar("embeddings")

    async def view() -> str:
        embeddings.set(ArrayLike())
        await signal.asend(sender=None)
        return request_id.get("<unset>")

    return asyncio.run(view())


def nested_dispatch_and_a_siblings_write(signal_class: type[Signal]) -> str:
    outer, inner = signal_class(), signal_class()

    async def slow_inner_receiver(**kwargs: Any) -> None:
        await asyncio.sleep(0.01)

    async def nesting(**kwargs: Any) -> None:
        await inner.asend(sender=None)

    async def sibling(**kwargs: Any) -> None:
        user.set("set by sibling")

    inner.connect(slow_inner_receiver)
    outer.connect(nesting)
    outer.connect(sibling)

    async def view() -> str:
        user.set("anonymous")
        await outer.asend(sender=None)
        return user.get("<unset>")

    return asyncio.run(view())


def translating(language: str) -> Callable[..., Any]:
    """A receiver that renders in `language` inside a span, around an await."""

    async def receiver(**kwargs: Any) -> None:
        with translation.override(language):
            token = span.set(f"receiver-{language}")
            await asyncio.sleep(0)
            span.reset(token)

    return receiver


def overrides_around_an_await(signal_class: type[Signal]) -> str:
    signal = signal_class()
    receivers = [translating("de"), translating("fr")]
    for receiver in receivers:
        signal.connect(receiver)

    async def view() -> str:
        translation.activate("en")
        await signal.asend(sender=None)
        return f"{translation.get_language()}, {span.get()}"

    return asyncio.run(view())


SCENARIOS: list[tuple[str, Callable[[type[Signal]], str]]] = [
    ("await signal.asend(): async receiver sets request_id", async_receiver_via_asend),
    ("signal.send() from sync code: async receiver", async_receiver_via_send),
    ("asend(): sync receiver sets user, async sets request_id", sync_and_async_receivers_via_asend),
    ("asend() while a ContextVar holds a numpy-like array", array_in_the_callers_context),
    (
        "sibling writes user while a receiver's nested asend() runs",
        nested_dispatch_and_a_siblings_write,
    ),
    (
        "two receivers: translation.override() and a span around an await",
        overrides_around_an_await,
    ),
]


def outcome(scenario: Callable[[type[Signal]], str], signal_class: type[Signal]) -> str:
    try:
        return scenario(signal_class)
    except Exception as error:  # noqa: BLE001 -- the demo shows what Django raises
        return f"raises {type(error).__name__}"


def print_table(header: tuple[str, str, str], rows: list[tuple[str, str, str]]) -> None:
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(3)]
    for row in (header, tuple("-" * w for w in widths), *rows):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    print()


LOST = "- (lost)"


def lifecycle(handler: str) -> list[str]:
    """What each stage of three real requests saw, served with `handler`."""
    with uvicorn(handler) as served:
        url = served.url
        view = httpx.get(f"{url}/connection/", headers={"X-Request-Id": "req-1"}).json()
        request_with_disconnect(url, "req-2")
        events = wait_for_finished(url, ["req-1", "req-2"])
    first, second = events.get("req-1", {}), events.get("req-2", {})

    def show(event: dict[str, object], key: str) -> str:
        return str(event.get(key) or LOST)

    return [
        show(view, "request_id"),
        show(view, "local_id"),
        show(first.get("request_finished (sync)", {}), "connection"),
        show(first.get("request_finished (async)", {}), "connection"),
        show(second.get("request_finished (async)", {}), "connection"),
    ]


def request_with_disconnect(url: str, request_id: str) -> None:
    """GET /wait/, whose view waits, and hang up once the view has started."""
    host, port = url.rsplit("/", 1)[1].split(":")
    with socket.create_connection((host, int(port))) as client:
        client.sendall(
            f"GET /wait/ HTTP/1.1\r\nHost: {host}\r\nX-Request-Id: {request_id}\r\n\r\n".encode()
        )
        wait_for_finished(url, [request_id], stage="view started")


def wait_for_finished(
    url: str, request_ids: list[str], stage: str = "request_finished (async)"
) -> dict[str, dict[str, dict[str, object]]]:
    """Events by request and stage, once each request reached `stage` (5 s at most)."""
    by_request: dict[str, dict[str, dict[str, object]]] = {}
    for _ in range(250):
        events = httpx.get(f"{url}/events/").json()
        by_request = {
            request_id: {event["stage"]: event for event in events.get(request_id, [])}
            for request_id in request_ids
        }
        if all(stage in stages for stages in by_request.values()):
            break
        time.sleep(0.02)
    return by_request


LIFECYCLE_ROWS = [
    "view: request_id, set by a sync request_started receiver",
    "view: Local attribute, set by an async request_started receiver",
    "request_finished, sync receiver: the connection the view opened",
    "request_finished, async receiver: the connection the view opened",
    "client hung up, view cancelled: request_finished sees its connection",
]


def main() -> None:
    print(f"Django {django.get_version()}, served by uvicorn on 127.0.0.1\n")
    print("1. What each stage of a request sees (request ids req-1 and req-2)\n")
    stock, structured = lifecycle("django"), lifecycle("structured")
    print_table(
        ("stage", "Django's ASGIHandler", "StructuredASGIHandler"),
        list(zip(LIFECYCLE_ROWS, stock, structured)),
    )
    print("2. What the caller sees after one dispatch\n")
    print_table(
        ("scenario", "django.dispatch.Signal", "StructuredSignal"),
        [
            (title, outcome(scenario, Signal), outcome(scenario, StructuredSignal))
            for title, scenario in SCENARIOS
        ],
    )


if __name__ == "__main__":
    main()
