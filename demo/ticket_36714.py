"""Django ticket #36714, side by side: Django's Signal against StructuredSignal.

Each row dispatches one signal through the installed Django's own
`django.dispatch.Signal`, then through `structured_signals.StructuredSignal`,
and prints what the caller sees afterwards.
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import TYPE_CHECKING, Any

import django
from django.conf import settings
from django.dispatch import Signal

from structured_signals import StructuredSignal

if TYPE_CHECKING:
    from collections.abc import Callable

settings.configure()
django.setup()

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id")
user: contextvars.ContextVar[str] = contextvars.ContextVar("user")


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


SCENARIOS: list[tuple[str, Callable[[type[Signal]], str]]] = [
    ("await signal.asend(): async receiver sets request_id", async_receiver_via_asend),
    ("signal.send() from sync code: async receiver", async_receiver_via_send),
    ("asend(): sync receiver sets user, async sets request_id", sync_and_async_receivers_via_asend),
    ("asend() while a ContextVar holds a numpy-like array", array_in_the_callers_context),
    (
        "sibling writes user while a receiver's nested asend() runs",
        nested_dispatch_and_a_siblings_write,
    ),
]


def outcome(scenario: Callable[[type[Signal]], str], signal_class: type[Signal]) -> str:
    try:
        return scenario(signal_class)
    except Exception as error:  # noqa: BLE001 -- the demo shows what Django raises
        return f"raises {type(error).__name__}"


def main() -> None:
    print(f"Django {django.get_version()}: what the caller sees after the dispatch\n")
    header = ("scenario", "django.dispatch.Signal", "StructuredSignal")
    rows = [
        (title, outcome(scenario, Signal), outcome(scenario, StructuredSignal))
        for title, scenario in SCENARIOS
    ]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(3)]
    for row in (header, tuple("-" * w for w in widths), *rows):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)))


if __name__ == "__main__":
    main()
