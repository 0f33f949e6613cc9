"""Helpers shared by the test modules (not a test module itself)."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import sys
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import uvloop

from structured_signals._compat import local_attributes

T = TypeVar("T")

Runner = Callable[[Coroutine[Any, Any, Any]], Any]


def _eager_loop() -> asyncio.AbstractEventLoop:
    loop = asyncio.new_event_loop()
    loop.set_task_factory(asyncio.eager_task_factory)  # type: ignore[attr-defined,unused-ignore]
    return loop


# Dispatch must behave the same on each loop a Django deployment runs on
# (SPEC 6): asyncio's default, uvloop (uvicorn's pick) and, on 3.12+, eager tasks.
LOOP_FACTORIES: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}
if sys.version_info >= (3, 12):
    LOOP_FACTORIES["eager"] = _eager_loop


def runner(new_loop: Callable[[], asyncio.AbstractEventLoop]) -> Runner:
    def run(coroutine: Coroutine[Any, Any, T]) -> T:
        loop = new_loop()
        try:
            return loop.run_until_complete(coroutine)
        finally:
            try:
                _cancel_pending_tasks(loop)
                # uvloop may still be stopping after a KeyboardInterrupt.
                with contextlib.suppress(RuntimeError):
                    loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()

    return run


def _cancel_pending_tasks(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel what is left, as asyncio.run() does.

    A KeyboardInterrupt or SystemExit raised in a task leaves the loop at once
    (asyncio re-raises them), with the other tasks pending; finishing those
    can raise it once more, or (the taskgroup backport on uvloop) stop the
    loop early.
    """
    for _ in range(10):
        pending = asyncio.all_tasks(loop)
        if not pending:
            return
        for task in pending:
            task.cancel()
        try:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        except (KeyboardInterrupt, SystemExit, RuntimeError):
            continue


def in_plain_thread(function: Callable[[], T]) -> T:
    """Call `function` in a new thread with no event loop and an empty context."""
    results: list[T] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            results.append(function())
        except BaseException as error:  # noqa: BLE001 -- re-raised in the caller
            errors.append(error)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return results[0]


def snapshot() -> dict[contextvars.ContextVar[Any], Any]:
    return dict(contextvars.copy_context())


def assert_context_is(before: dict[contextvars.ContextVar[Any], Any]) -> None:
    """The current context holds exactly the objects of `before`."""
    now = snapshot()
    assert now.keys() == before.keys()
    changed = [variable.name for variable, value in now.items() if value is not before[variable]]
    assert not changed, f"changed: {changed}"


def assert_context_is_as_written(
    before: dict[contextvars.ContextVar[Any], Any], expected: contextvars.Context
) -> None:
    """The current context holds `before`'s objects, except where `expected`
    (a copy of `before` written to) holds others: there, equal values, a
    Local's attributes compared one by one."""
    now, wanted_values = snapshot(), dict(expected)
    assert now.keys() == wanted_values.keys()
    for variable, value in now.items():
        wanted = wanted_values[variable]
        if variable in before and wanted is before[variable]:
            assert value is wanted, f"changed: {variable.name}"
        else:
            assert _readable(variable, value) == _readable(variable, wanted), variable.name


def _readable(variable: contextvars.ContextVar[Any], value: object) -> object:
    attributes = local_attributes(variable, value)
    return value if attributes is None else dict(attributes)


async def asend_checking_context_when_cancelled(signal: Any) -> None:
    """`await signal.asend()`; if it is cancelled, the context must be as before."""
    before = snapshot()
    try:
        await signal.asend(sender=None)
    except asyncio.CancelledError:
        assert_context_is(before)
        raise


class Bomb:
    """A value like a numpy array: comparing or truth-testing it raises."""

    def __eq__(self, other: object) -> bool:
        raise ValueError("The truth value of an array is ambiguous")

    def __ne__(self, other: object) -> bool:
        raise ValueError("The truth value of an array is ambiguous")

    def __bool__(self) -> bool:
        raise ValueError("The truth value of an array is ambiguous")

    __hash__ = object.__hash__


class Flag:
    """An asyncio.Event created on first use, inside the loop that runs the receivers.

    Below Python 3.10 an Event binds to the loop current when it is created,
    and `send` runs async receivers on a loop of asgiref's.
    """

    def __init__(self) -> None:
        self._event: asyncio.Event | None = None

    @property
    def _current(self) -> asyncio.Event:
        if self._event is None:
            self._event = asyncio.Event()
        return self._event

    def set(self) -> None:
        self._current.set()

    async def wait(self) -> None:
        await self._current.wait()
