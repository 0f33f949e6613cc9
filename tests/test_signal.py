"""StructuredSignal: SPEC sections 2-4, through all four entry points."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import gc
import logging
import sys
import threading
import traceback
import warnings
from typing import TYPE_CHECKING, Any

import django
import pytest
from asgiref.local import Local
from asgiref.sync import iscoroutinefunction
from django import dispatch
from django.dispatch import receiver
from support import (
    Bomb,
    Flag,
    Runner,
    asend_checking_context_when_cancelled,
    assert_context_is,
    assert_context_is_as_written,
    in_plain_thread,
    snapshot,
)

import structured_signals._signal
from structured_signals import MISSING, Conflict, ContextConflictError, StructuredSignal, upgrade
from structured_signals._compat import BaseExceptionGroup

if TYPE_CHECKING:
    from collections.abc import Callable

METHODS = ("send", "send_robust", "asend", "asend_robust")
MODES = ("shared", "isolated")

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id")
user: contextvars.ContextVar[str] = contextvars.ContextVar("user")
counter: contextvars.ContextVar[int] = contextvars.ContextVar("counter", default=0)
connection: contextvars.ContextVar[object] = contextvars.ContextVar("connection")
request_state = Local()


class ReceiverError(Exception):
    pass


def dispatch_and_read(
    run: Runner,
    signal: StructuredSignal,
    method: str,
    read: Callable[[], Any],
    prepare: Callable[[], object] = lambda: None,
) -> tuple[list[tuple[Any, Any]], Any]:
    """Dispatch through `method` from a caller of the matching kind; `read` there after.

    Sync methods are called from a plain thread with no event loop, async ones
    from a task. `prepare` runs in the caller's context first.
    """
    if method.startswith("a"):

        async def caller() -> tuple[list[tuple[Any, Any]], Any]:
            prepare()
            responses = await getattr(signal, method)(sender=None)
            return responses, read()

        result: tuple[list[tuple[Any, Any]], Any] = run(caller())
        return result

    def sync_caller() -> tuple[list[tuple[Any, Any]], Any]:
        prepare()
        responses = getattr(signal, method)(sender=None)
        return responses, read()

    return in_plain_thread(sync_caller)


def assert_dispatch_raises_and_merges_nothing(
    run: Runner,
    signal: StructuredSignal,
    method: str,
    error: type[BaseException],
    prepare: Callable[[], dict[contextvars.ContextVar[Any], Any]] = snapshot,
    sync_receivers_wrote: Callable[[], object] = lambda: None,
) -> None:
    """Dispatching through `method` raises `error`, and the caller's context
    stays exactly as `prepare` left it, with no task left behind.

    Except, for a sync `send()`, what its sync receivers wrote in the caller's
    own context as they ran, as under Django: `sync_receivers_wrote` writes it
    into the expected context.
    """

    async def async_caller() -> None:
        before = prepare()
        with pytest.raises(error):
            await getattr(signal, method)(sender=None)
        assert_context_is(before)
        assert asyncio.all_tasks() == {asyncio.current_task()}

    def sync_caller() -> None:
        before = prepare()
        expected = contextvars.copy_context()
        expected.run(sync_receivers_wrote)
        with pytest.raises(error):
            getattr(signal, method)(sender=None)
        assert_context_is_as_written(before, expected)

    if method.startswith("a"):
        run(async_caller())
    else:
        in_plain_thread(sync_caller)


def test_structured_signal_is_a_django_signal() -> None:
    assert isinstance(StructuredSignal(), dispatch.Signal)


def test_unknown_context_mode_raises_value_error_naming_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="'shared', 'isolated'"):
        StructuredSignal(context="private")  # type: ignore[arg-type]


def test_unknown_conflict_policy_raises_value_error_naming_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="'raise', 'first', 'last', or a callable"):
        StructuredSignal(on_conflict="newest")  # type: ignore[arg-type]


def test_use_caching_is_positional_as_in_django() -> None:
    assert StructuredSignal(True).use_caching is True


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("method", METHODS)
def test_ticket_example_request_id_set_by_async_receiver_reaches_the_caller(
    run: Runner, method: str, mode: str
) -> None:
    signal = StructuredSignal(context=mode)  # type: ignore[arg-type]

    async def set_request_id(**kwargs: Any) -> None:
        request_id.set("req-1")

    signal.connect(set_request_id)
    _, seen = dispatch_and_read(run, signal, method, lambda: request_id.get("<unset>"))
    assert seen == "req-1"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("method", METHODS)
def test_sync_and_async_receiver_writes_reach_the_caller(
    run: Runner, method: str, mode: str
) -> None:
    signal = StructuredSignal(context=mode)  # type: ignore[arg-type]

    def open_connection(**kwargs: Any) -> None:
        connection.set("db")
        request_state.user_id = 7

    async def identify(**kwargs: Any) -> None:
        await asyncio.sleep(0)
        user.set("alice")
        request_state.tenant = "acme"

    signal.connect(open_connection)
    signal.connect(identify)

    def read() -> tuple[object, ...]:
        return (
            connection.get(None),
            user.get(None),
            getattr(request_state, "user_id", None),
            getattr(request_state, "tenant", None),
        )

    _, seen = dispatch_and_read(run, signal, method, read)
    assert seen == ("db", "alice", 7, "acme")


@pytest.mark.parametrize("method", METHODS)
def test_sync_receivers_run_in_connection_order_each_seeing_the_previous_writes(
    run: Runner, method: str
) -> None:
    signal = StructuredSignal()
    seen: list[int] = []

    def increment(**kwargs: Any) -> int:
        seen.append(counter.get())
        counter.set(counter.get() + 1)
        return counter.get()

    def increment_again(**kwargs: Any) -> int:
        return increment(**kwargs)

    signal.connect(increment)
    signal.connect(increment_again)
    responses, final = dispatch_and_read(run, signal, method, counter.get)
    assert seen == [0, 1]
    assert responses == [(increment, 1), (increment_again, 2)]
    assert final == 2


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("method", METHODS)
def test_responses_list_sync_receivers_first_then_async_each_in_connection_order(
    run: Runner, method: str, mode: str
) -> None:
    signal = StructuredSignal(context=mode)  # type: ignore[arg-type]

    async def first_async(**kwargs: Any) -> str:
        await asyncio.sleep(0.01)
        return "first_async"

    def first_sync(**kwargs: Any) -> str:
        return "first_sync"

    async def second_async(**kwargs: Any) -> str:
        return "second_async"

    def second_sync(**kwargs: Any) -> str:
        return "second_sync"

    for connected in (first_async, first_sync, second_async, second_sync):
        signal.connect(connected)
    responses, _ = dispatch_and_read(run, signal, method, lambda: None)
    assert responses == [
        (first_sync, "first_sync"),
        (second_sync, "second_sync"),
        (first_async, "first_async"),
        (second_async, "second_async"),
    ]


@pytest.mark.parametrize("method", METHODS)
def test_shared_async_receivers_see_each_others_writes_as_they_happen(
    run: Runner, method: str
) -> None:
    signal = StructuredSignal(context="shared")
    seen_by_reader: list[str] = []
    written = Flag()

    async def writer(**kwargs: Any) -> None:
        user.set("written by writer")
        written.set()

    async def reader(**kwargs: Any) -> None:
        await written.wait()
        seen_by_reader.append(user.get("<unset>"))

    signal.connect(reader)
    signal.connect(writer)
    dispatch_and_read(run, signal, method, lambda: None)
    assert seen_by_reader == ["written by writer"]


@pytest.mark.parametrize("method", METHODS)
def test_isolated_async_receivers_do_not_see_each_others_writes(run: Runner, method: str) -> None:
    signal = StructuredSignal(context="isolated")
    seen_by_reader: list[str] = []

    async def writer(**kwargs: Any) -> None:
        user.set("written by writer")

    async def reader(**kwargs: Any) -> None:
        for _ in range(5):
            await asyncio.sleep(0)
        seen_by_reader.append(user.get("<unset>"))
        request_id.set("written by reader")

    signal.connect(writer)
    signal.connect(reader)
    _, seen = dispatch_and_read(run, signal, method, lambda: (user.get(), request_id.get()))
    assert seen_by_reader == ["<unset>"]
    assert seen == ("written by writer", "written by reader")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("method", METHODS)
def test_variables_nobody_changed_are_not_touched(run: Runner, method: str, mode: str) -> None:
    signal = StructuredSignal(context=mode)  # type: ignore[arg-type]
    mine = object()

    def sync_receiver(**kwargs: Any) -> None:
        request_id.set("sync")

    async def async_receiver(**kwargs: Any) -> None:
        user.set("async")

    signal.connect(sync_receiver)
    signal.connect(async_receiver)
    _, seen = dispatch_and_read(
        run, signal, method, lambda: connection.get(), prepare=lambda: connection.set(mine)
    )
    assert seen is mine


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("method", METHODS)
def test_a_value_whose_comparisons_raise_does_not_break_dispatch(
    run: Runner, method: str, mode: str
) -> None:
    signal = StructuredSignal(context=mode)  # type: ignore[arg-type]
    array_like = Bomb()

    def sync_receiver(**kwargs: Any) -> None:
        request_id.set("sync")

    async def async_receiver(**kwargs: Any) -> None:
        user.set("async")
        connection.set(Bomb())

    signal.connect(sync_receiver)
    signal.connect(async_receiver)
    prepared = contextvars.ContextVar[object]("array")
    _, seen = dispatch_and_read(
        run,
        signal,
        method,
        lambda: (prepared.get(), request_id.get(), user.get(), type(connection.get())),
        prepare=lambda: prepared.set(array_like),
    )
    assert seen == (array_like, "sync", "async", Bomb)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("method", ["send", "asend"])
@pytest.mark.parametrize("failing", ["sync", "async"])
def test_a_dispatch_that_raises_merges_nothing_but_a_sends_sync_receivers_wrote_as_they_ran(
    run: Runner, method: str, mode: str, failing: str
) -> None:
    signal = StructuredSignal(context=mode)  # type: ignore[arg-type]

    def sync_receiver(**kwargs: Any) -> None:
        write_sync_values()
        if failing == "sync":
            raise ReceiverError

    def write_sync_values() -> None:
        request_id.set("sync")
        request_state.user_id = 1

    async def async_receiver(**kwargs: Any) -> None:
        user.set("async")
        request_state.tenant = "acme"
        if failing == "async":
            raise ReceiverError

    signal.connect(sync_receiver)
    signal.connect(async_receiver)

    def prepare() -> dict[contextvars.ContextVar[Any], Any]:
        request_id.set("before")
        request_state.user_id = 0
        return snapshot()

    assert_dispatch_raises_and_merges_nothing(
        run, signal, method, ReceiverError, prepare, sync_receivers_wrote=write_sync_values
    )


@pytest.mark.parametrize("mode", MODES)
def test_a_receiver_exception_cancels_its_siblings(run: Runner, mode: str) -> None:
    signal = StructuredSignal(context=mode)  # type: ignore[arg-type]
    cancelled: list[str] = []

    async def slow(**kwargs: Any) -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append("slow")
            raise

    async def failing(**kwargs: Any) -> None:
        await asyncio.sleep(0)
        raise ReceiverError

    signal.connect(slow)
    signal.connect(failing)

    async def caller() -> None:
        with pytest.raises(ReceiverError):
            await signal.asend(sender=None)

    run(caller())
    assert cancelled == ["slow"]


@pytest.mark.parametrize("mode", MODES)
def test_one_receiver_exception_is_raised_as_itself(run: Runner, mode: str) -> None:
    signal = StructuredSignal(context=mode)  # type: ignore[arg-type]
    error = ReceiverError("boom")

    async def failing(**kwargs: Any) -> None:
        raise error

    signal.connect(failing)

    async def caller() -> None:
        with pytest.raises(ReceiverError) as raised:
            await signal.asend(sender=None)
        assert raised.value is error

    run(caller())
    with pytest.raises(ReceiverError) as raised:
        in_plain_thread(lambda: signal.send(sender=None))
    assert raised.value is error


@pytest.mark.parametrize("mode", MODES)
def test_several_receiver_exceptions_are_raised_as_an_exception_group(
    run: Runner, mode: str
) -> None:
    signal = StructuredSignal(context=mode)  # type: ignore[arg-type]
    first, second = ReceiverError("first"), ReceiverError("second")

    async def fail_first(**kwargs: Any) -> None:
        raise first

    async def fail_second(**kwargs: Any) -> None:
        raise second

    signal.connect(fail_first)
    signal.connect(fail_second)

    async def caller() -> None:
        await signal.asend(sender=None)

    with pytest.raises(BaseExceptionGroup) as raised:
        run(caller())
    assert set(raised.value.exceptions) == {first, second}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("method", ["send_robust", "asend_robust"])
def test_robust_dispatch_returns_each_exception_as_its_response_without_cancelling_siblings(
    run: Runner, method: str, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    signal = StructuredSignal(context=mode)  # type: ignore[arg-type]
    sync_error, async_error = ReceiverError("sync"), ReceiverError("async")

    def failing_sync(**kwargs: Any) -> None:
        raise sync_error

    async def failing_async(**kwargs: Any) -> None:
        raise async_error

    async def slow(**kwargs: Any) -> str:
        await asyncio.sleep(0.01)
        user.set("slow finished")
        return "done"

    for connected in (failing_sync, failing_async, slow):
        signal.connect(connected)
    with caplog.at_level(logging.ERROR, logger="django.dispatch"):
        responses, seen = dispatch_and_read(run, signal, method, user.get)
    assert responses == [(failing_sync, sync_error), (failing_async, async_error), (slow, "done")]
    assert seen == "slow finished"
    assert "failing_async" in caplog.text
    assert "failing_sync" in caplog.text


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("method", ["send_robust", "asend_robust"])
def test_robust_dispatch_drops_a_failed_receivers_writes_if_isolated_but_send_robusts_sync_ones(
    run: Runner, method: str, mode: str
) -> None:
    signal = StructuredSignal(context=mode)  # type: ignore[arg-type]

    def failing_sync(**kwargs: Any) -> None:
        connection.set("from failing sync")
        raise ReceiverError

    def working_sync(**kwargs: Any) -> None:
        request_id.set("from working sync")

    async def failing_async(**kwargs: Any) -> None:
        user.set("from failing async")
        request_state.tenant = "from failing async"
        raise ReceiverError

    async def working_async(**kwargs: Any) -> None:
        request_state.user_id = 3

    for connected in (failing_sync, working_sync, failing_async, working_async):
        signal.connect(connected)

    def read() -> tuple[object, ...]:
        return (
            connection.get(None),
            request_id.get(None),
            user.get(None),
            getattr(request_state, "tenant", None),
            getattr(request_state, "user_id", None),
        )

    _, seen = dispatch_and_read(run, signal, method, read)
    if mode == "isolated":
        # send_robust() calls its sync receivers in the caller's own context,
        # as Django does: what they write is the caller's as it happens.
        failed_sync_write = "from failing sync" if method == "send_robust" else None
        assert seen == (failed_sync_write, "from working sync", None, None, 3)
    else:
        # As in Django 6.1: the failed receivers wrote in the shared context.
        failed_writes = ("from failing sync", "from failing async", "from failing async")
        assert seen == (failed_writes[0], "from working sync", *failed_writes[1:], 3)


@pytest.mark.parametrize("mode", MODES)
def test_cancelling_the_caller_cancels_every_receiver_merges_nothing_and_leaves_no_task(
    run: Runner, mode: str
) -> None:
    signal = StructuredSignal(context=mode)  # type: ignore[arg-type]
    cancelled: list[str] = []
    started = 0

    async def waiting(**kwargs: Any) -> None:
        nonlocal started
        user.set("written before waiting")
        started += 1
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append("waiting")
            raise

    async def waiting_too(**kwargs: Any) -> None:
        await waiting()

    signal.connect(waiting)
    signal.connect(waiting_too)

    async def main() -> set[asyncio.Task[Any]]:
        task = asyncio.ensure_future(asend_checking_context_when_cancelled(signal))
        while started < 2:
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return asyncio.all_tasks() - {asyncio.current_task()}

    left = run(main())
    assert cancelled == ["waiting", "waiting"]
    assert left == set()


def test_a_dispatch_leaves_no_task_behind(run: Runner) -> None:
    signal = StructuredSignal()

    async def receiver_(**kwargs: Any) -> None:
        await asyncio.sleep(0)

    signal.connect(receiver_)

    async def main() -> set[asyncio.Task[Any]]:
        await signal.asend(sender=None)
        return asyncio.all_tasks() - {asyncio.current_task()}

    assert run(main()) == set()


@pytest.mark.parametrize("method", METHODS)
def test_isolated_receivers_writing_different_values_raise_a_conflict_and_merge_nothing(
    run: Runner, method: str
) -> None:
    signal = StructuredSignal(context="isolated")

    async def as_alice(**kwargs: Any) -> None:
        user.set("alice")
        request_id.set("unrelated write")

    async def as_bob(**kwargs: Any) -> None:
        user.set("bob")

    signal.connect(as_alice)
    signal.connect(as_bob)
    with pytest.raises(ContextConflictError) as raised:
        dispatch_and_read(run, signal, method, lambda: None)
    (conflict,) = raised.value.conflicts
    assert conflict.variable is user
    assert conflict.base is MISSING
    assert [(name.rsplit(".", 1)[-1], value) for name, value in conflict.writers] == [
        ("as_alice", "alice"),
        ("as_bob", "bob"),
    ]
    message = str(raised.value)
    assert "user" in message
    assert "as_alice" in message
    assert "as_bob" in message
    assert "on_conflict=" in message

    async def async_caller() -> None:
        before = snapshot()
        with pytest.raises(ContextConflictError):
            await signal.asend(sender=None)
        assert_context_is(before)

    run(async_caller())


@pytest.mark.parametrize("method", METHODS)
def test_isolated_receivers_writing_equal_values_do_not_conflict(run: Runner, method: str) -> None:
    signal = StructuredSignal(context="isolated")

    async def one(**kwargs: Any) -> None:
        user.set("".join(["al", "ice"]))

    async def other(**kwargs: Any) -> None:
        user.set("alice")

    signal.connect(one)
    signal.connect(other)
    _, seen = dispatch_and_read(run, signal, method, user.get)
    assert seen == "alice"


def test_values_whose_equality_raises_are_different_and_conflict(run: Runner) -> None:
    signal = StructuredSignal(context="isolated")

    async def one(**kwargs: Any) -> None:
        connection.set(Bomb())

    async def other(**kwargs: Any) -> None:
        connection.set(Bomb())

    signal.connect(one)
    signal.connect(other)

    async def caller() -> None:
        await signal.asend(sender=None)

    with pytest.raises(ContextConflictError):
        run(caller())


@pytest.mark.parametrize(("policy", "expected"), [("first", "slow first"), ("last", "fast last")])
def test_first_and_last_keep_the_writer_by_connection_order_not_finishing_order(
    run: Runner, policy: str, expected: str
) -> None:
    signal = StructuredSignal(context="isolated", on_conflict=policy)  # type: ignore[arg-type]

    async def slow_first(**kwargs: Any) -> None:
        await asyncio.sleep(0.02)
        user.set("slow first")

    async def fast_last(**kwargs: Any) -> None:
        user.set("fast last")

    signal.connect(slow_first)
    signal.connect(fast_last)

    async def caller() -> str:
        await signal.asend(sender=None)
        return user.get()

    assert run(caller()) == expected


def test_a_callable_conflict_policy_decides_the_value(run: Runner) -> None:
    received: list[Conflict] = []

    def join(conflict: Conflict) -> object:
        received.append(conflict)
        return "+".join(str(value) for _, value in conflict.writers)

    signal = StructuredSignal(context="isolated", on_conflict=join)

    async def one(**kwargs: Any) -> None:
        user.set("a")

    async def other(**kwargs: Any) -> None:
        user.set("b")

    signal.connect(one)
    signal.connect(other)

    async def caller() -> str:
        user.set("base")
        await signal.asend(sender=None)
        return user.get()

    assert run(caller()) == "a+b"
    assert [conflict.base for conflict in received] == ["base"]


def test_receivers_setting_different_attributes_of_one_local_both_survive(run: Runner) -> None:
    signal = StructuredSignal(context="isolated")

    async def set_user(**kwargs: Any) -> None:
        request_state.user_id = 1

    async def set_tenant(**kwargs: Any) -> None:
        request_state.tenant = "acme"

    signal.connect(set_user)
    signal.connect(set_tenant)

    async def caller() -> tuple[object, object, object]:
        request_state.locale = "fr"
        await signal.asend(sender=None)
        return request_state.user_id, request_state.tenant, request_state.locale

    assert run(caller()) == (1, "acme", "fr")


def test_receivers_setting_one_local_attribute_to_different_values_conflict(run: Runner) -> None:
    signal = StructuredSignal(context="isolated")

    async def one(**kwargs: Any) -> None:
        request_state.user_id = 1

    async def other(**kwargs: Any) -> None:
        request_state.user_id = 2

    signal.connect(one)
    signal.connect(other)

    async def caller() -> None:
        await signal.asend(sender=None)

    with pytest.raises(ContextConflictError) as raised:
        run(caller())
    (conflict,) = raised.value.conflicts
    assert conflict.attribute == "user_id"
    assert "Local attribute 'user_id'" in str(raised.value)


@pytest.mark.parametrize("method", METHODS)
def test_a_local_attribute_deleted_by_a_receiver_is_deleted_in_the_caller(
    run: Runner, method: str
) -> None:
    signal = StructuredSignal()

    async def log_out(**kwargs: Any) -> None:
        del request_state.user_id

    signal.connect(log_out)

    def prepare() -> None:
        request_state.user_id = 5
        request_state.tenant = "acme"

    _, seen = dispatch_and_read(
        run,
        signal,
        method,
        lambda: (hasattr(request_state, "user_id"), request_state.tenant),
        prepare=prepare,
    )
    assert seen == (False, "acme")


def test_a_local_set_by_a_sync_receiver_is_seen_by_async_receivers(run: Runner) -> None:
    signal = StructuredSignal()
    seen: list[object] = []

    def set_user(**kwargs: Any) -> None:
        request_state.user_id = 9

    async def read_user(**kwargs: Any) -> None:
        seen.append(getattr(request_state, "user_id", None))

    signal.connect(set_user)
    signal.connect(read_user)

    async def caller() -> None:
        await signal.asend(sender=None)

    run(caller())
    assert seen == [9]


def nested_dispatch(
    inner: StructuredSignal, inner_writes: contextvars.ContextVar[str]
) -> StructuredSignal:
    """An outer signal whose receivers run side by side in its shared context:
    the first dispatches `inner`, whose receiver writes `inner_writes` only
    after the second (the sibling) has set `user` meanwhile."""
    outer = StructuredSignal()
    sibling_wrote = Flag()

    async def inner_receiver(**kwargs: Any) -> None:
        await sibling_wrote.wait()
        inner_writes.set("from inner receiver")

    async def nesting(**kwargs: Any) -> None:
        await inner.asend(sender=None)

    async def sibling(**kwargs: Any) -> None:
        user.set("from sibling")
        sibling_wrote.set()

    inner.connect(inner_receiver, weak=False)
    outer.connect(nesting, weak=False)
    outer.connect(sibling, weak=False)
    return outer


async def asend_and_read_user_and_request_id(signal: StructuredSignal) -> tuple[str, str]:
    await signal.asend(sender=None)
    return user.get("<unset>"), request_id.get("<unset>")


def test_nested_dispatch_keeps_a_siblings_unrelated_write_made_meanwhile(run: Runner) -> None:
    outer = nested_dispatch(StructuredSignal(), inner_writes=request_id)
    seen = run(asend_and_read_user_and_request_id(outer))
    assert seen == ("from sibling", "from inner receiver")


def test_nested_dispatch_conflicts_with_a_siblings_concurrent_write_of_the_same_variable(
    run: Runner,
) -> None:
    outer = nested_dispatch(StructuredSignal(), inner_writes=user)
    with pytest.raises(ContextConflictError) as raised:
        run(asend_and_read_user_and_request_id(outer))
    (conflict,) = raised.value.conflicts
    assert conflict.writers[0][0] == "caller"
    assert [value for _, value in conflict.writers] == ["from sibling", "from inner receiver"]


def test_caller_side_counts_as_first_writer_for_on_conflict_first(run: Runner) -> None:
    outer = nested_dispatch(StructuredSignal(on_conflict="first"), inner_writes=user)
    assert run(asend_and_read_user_and_request_id(outer)) == ("from sibling", "<unset>")


def test_django_signal_api_connect_disconnect_has_listeners_and_receiver_decorator() -> None:
    signal = StructuredSignal()

    class Sender:
        pass

    @receiver(signal, sender=Sender, dispatch_uid="uid")
    def on_sender(**kwargs: Any) -> str:
        return "called"

    signal.connect(on_sender, sender=Sender, dispatch_uid="uid")
    assert signal.has_listeners(Sender)
    assert not signal.has_listeners(object)
    assert signal.send(sender=Sender) == [(on_sender, "called")]
    assert signal.send(sender=object) == []
    assert signal.disconnect(sender=Sender, dispatch_uid="uid")
    assert not signal.has_listeners(Sender)


def test_weakly_connected_receivers_go_away_with_their_object() -> None:
    signal = StructuredSignal(use_caching=True)

    class Sender:
        pass

    async def temporary(**kwargs: Any) -> None:
        pass

    signal.connect(temporary)
    assert signal.has_listeners(Sender)
    del temporary
    gc.collect()
    assert not signal.has_listeners(Sender)
    assert signal.send(sender=Sender) == []


def test_djangos_own_signal_keeps_async_receiver_writes_only_from_django_6_1(run: Runner) -> None:
    """The bug this package exists for (#36714), as the installed Django has it."""
    signal = dispatch.Signal()

    async def set_request_id(**kwargs: Any) -> None:
        request_id.set("req-1")

    signal.connect(set_request_id)
    if django.VERSION < (5, 0):
        # Django 4.2 has no async dispatch at all.
        assert not hasattr(signal, "asend")
        return

    async def caller() -> str:
        await signal.asend(sender=None)
        return request_id.get("<lost>")

    assert run(caller()) == ("req-1" if django.VERSION >= (6, 1) else "<lost>")


@pytest.mark.parametrize("timeout", [0, -1, True, "1", float("nan")])
def test_a_timeout_that_is_not_a_positive_number_raises_value_error(timeout: Any) -> None:
    with pytest.raises(ValueError, match="use None"):
        StructuredSignal(timeout=timeout)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("method", ["send", "asend"])
def test_a_dispatch_past_its_timeout_cancels_its_receivers_merges_nothing_and_raises(
    run: Runner, method: str, mode: str
) -> None:
    signal = StructuredSignal(context=mode, timeout=0.05)  # type: ignore[arg-type]
    cancelled: list[str] = []

    def sync_receiver(**kwargs: Any) -> None:
        request_id.set("sync")

    async def fast(**kwargs: Any) -> None:
        user.set("fast")

    async def slow(**kwargs: Any) -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append("slow")
            raise

    for connected in (sync_receiver, fast, slow):
        signal.connect(connected)

    assert_dispatch_raises_and_merges_nothing(
        run, signal, method, TimeoutError, sync_receivers_wrote=lambda: request_id.set("sync")
    )
    assert cancelled == ["slow"]


@pytest.mark.parametrize("method", ["send_robust", "asend_robust"])
def test_a_robust_dispatch_past_its_timeout_answers_timeout_error_for_unfinished_receivers(
    run: Runner, method: str
) -> None:
    signal = StructuredSignal(context="isolated", timeout=0.05)

    async def fast(**kwargs: Any) -> str:
        user.set("fast")
        return "done"

    async def slow(**kwargs: Any) -> str:
        request_id.set("slow, before the timeout")
        await asyncio.sleep(10)
        return "never"

    signal.connect(fast)
    signal.connect(slow)
    responses, seen = dispatch_and_read(
        run, signal, method, lambda: (user.get(None), request_id.get(None))
    )
    assert responses[0] == (fast, "done")
    assert responses[1][0] is slow
    assert isinstance(responses[1][1], TimeoutError)
    assert seen == ("fast", None)


def test_upgrade_makes_a_django_signal_structured_in_place_keeping_its_receivers(
    run: Runner,
) -> None:
    signal = dispatch.Signal()

    async def set_request_id(**kwargs: Any) -> None:
        request_id.set("req-1")

    signal.connect(set_request_id)
    upgraded = upgrade(signal, context="isolated")
    assert upgraded is signal
    assert isinstance(signal, StructuredSignal)
    assert upgraded.context == "isolated"
    _, seen = dispatch_and_read(run, upgraded, "asend", request_id.get)
    assert seen == "req-1"


def test_upgrade_keeps_a_signal_subclass_and_its_own_arguments() -> None:
    from django.apps import apps
    from django.db.models.signals import ModelSignal

    signal = ModelSignal(use_caching=True)

    class Sender:
        pass

    def on_save(**kwargs: Any) -> str:
        return "saved"

    upgraded = upgrade(signal)
    assert type(upgrade(ModelSignal())) is type(upgraded)
    kind: type = type(upgraded)
    assert issubclass(kind, ModelSignal)
    upgraded.connect(on_save, sender=Sender, apps=apps)
    assert upgraded.send(sender=Sender) == [(on_save, "saved")]
    assert upgraded.disconnect(on_save, sender=Sender, apps=apps)


def test_upgrade_refuses_a_subclass_with_its_own_dispatch_and_leaves_it_untouched() -> None:
    class Custom(dispatch.Signal):
        def send(self, sender: Any, **named: Any) -> list[tuple[Any, Any]]:
            return []

    signal = Custom()
    with pytest.raises(TypeError, match="subclass StructuredSignal instead"):
        upgrade(signal)
    assert type(signal) is Custom


def test_upgrade_with_an_unknown_option_raises_and_leaves_the_signal_untouched() -> None:
    signal = dispatch.Signal()
    with pytest.raises(ValueError, match="'shared', 'isolated'"):
        upgrade(signal, context="private")  # type: ignore[arg-type]
    assert type(signal) is dispatch.Signal


def test_connecting_a_non_callable_raises_type_error_saying_what_to_connect() -> None:
    signal = StructuredSignal()
    with pytest.raises(TypeError, match="connect a function, a method or an object"):
        signal.connect(42)  # type: ignore[arg-type]
    assert signal.receivers == []


def test_a_receiver_without_kwargs_is_refused_under_debug_as_django_does() -> None:
    from django.test import override_settings

    signal = StructuredSignal()

    def no_kwargs(sender: Any) -> None:
        pass

    with override_settings(DEBUG=True), pytest.raises(ValueError, match=r"\*\*kwargs"):
        signal.connect(no_kwargs)
    assert signal.receivers == []


class AsyncCallable:
    """An async receiver that iscoroutinefunction() does not recognise."""

    async def __call__(self, **kwargs: Any) -> str:
        await asyncio.sleep(0)
        user.set("set by an async __call__")
        return "awaited"


@pytest.mark.parametrize("method", METHODS)
def test_an_object_with_an_async_call_method_is_awaited_as_an_async_receiver(
    run: Runner, method: str
) -> None:
    signal = StructuredSignal()
    handler = AsyncCallable()
    signal.connect(handler)
    responses, seen = dispatch_and_read(run, signal, method, user.get)
    assert responses == [(handler, "awaited")]
    assert seen == "set by an async __call__"


def test_an_async_callable_with_slots_is_refused_with_the_way_to_connect_it() -> None:
    class Slotted:
        __slots__ = ()

        async def __call__(self, **kwargs: Any) -> None:
            pass

    signal = StructuredSignal()
    handler = Slotted()
    with pytest.raises(TypeError, match=r"signal.connect\(obj.__call__\)"):
        signal.connect(handler, weak=False)
    assert signal.receivers == []
    signal.connect(handler.__call__, weak=False)
    assert signal.send(sender=None) == [(handler.__call__, None)]


@pytest.mark.parametrize("method", METHODS)
def test_a_sync_receiver_that_returns_an_awaitable_gets_a_clear_error_naming_it(
    run: Runner, method: str
) -> None:
    signal = StructuredSignal()

    def forgot_async(**kwargs: Any) -> Any:
        return asyncio.sleep(0)

    signal.connect(forgot_async)
    if method.endswith("robust"):
        responses, _ = dispatch_and_read(run, signal, method, lambda: None)
        ((_, error),) = responses
    else:
        with pytest.raises(TypeError) as raised:
            dispatch_and_read(run, signal, method, lambda: None)
        error = raised.value
    assert isinstance(error, TypeError)
    assert "forgot_async" in str(error)
    assert "async def" in str(error)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("method", METHODS)
def test_a_receiver_disconnected_during_a_dispatch_is_not_called_after_disconnect_returned(
    run: Runner, method: str, mode: str
) -> None:
    signal = StructuredSignal(context=mode)  # type: ignore[arg-type]
    called: list[str] = []

    def sync_disconnects_the_others(**kwargs: Any) -> None:
        called.append("first")
        assert signal.disconnect(sync_victim)
        assert signal.disconnect(async_victim)

    def sync_victim(**kwargs: Any) -> None:
        called.append("sync victim")

    async def async_victim(**kwargs: Any) -> None:
        called.append("async victim")

    for connected in (sync_disconnects_the_others, sync_victim, async_victim):
        signal.connect(connected)
    responses, _ = dispatch_and_read(run, signal, method, lambda: None)
    assert called == ["first"]
    assert [receiver for receiver, _ in responses] == [sync_disconnects_the_others]


@pytest.mark.parametrize("method", METHODS)
def test_a_receiver_connected_during_a_dispatch_is_called_from_the_next_one(
    run: Runner, method: str
) -> None:
    signal = StructuredSignal()
    called: list[str] = []

    async def newcomer(**kwargs: Any) -> None:
        called.append("newcomer")

    async def connects_another_and_leaves(**kwargs: Any) -> None:
        called.append("host")
        signal.connect(newcomer)
        signal.disconnect(connects_another_and_leaves)

    signal.connect(connects_another_and_leaves)
    dispatch_and_read(run, signal, method, lambda: None)
    assert called == ["host"]
    dispatch_and_read(run, signal, method, lambda: None)
    assert called == ["host", "newcomer"]


def test_a_weak_receiver_dropped_during_a_dispatch_finishes_it_and_is_gone_after(
    run: Runner,
) -> None:
    signal = StructuredSignal()
    holder: dict[str, Any] = {}
    called: list[str] = []

    async def temporary(**kwargs: Any) -> None:
        called.append("temporary")

    async def drops_it(**kwargs: Any) -> None:
        holder.clear()
        gc.collect()

    holder["receiver"] = temporary
    signal.connect(temporary)
    signal.connect(drops_it)
    del temporary
    dispatch_and_read(run, signal, "asend", lambda: None)
    gc.collect()
    responses, _ = dispatch_and_read(run, signal, "asend", lambda: None)
    assert [receiver for receiver, _ in responses] == [drops_it]
    assert called == ["temporary"]


def test_connecting_and_disconnecting_from_other_threads_while_dispatching_raises_nothing(
    run: Runner,
) -> None:
    signal = StructuredSignal(use_caching=True)
    stop = threading.Event()
    errors: list[BaseException] = []

    class Sender:
        pass

    def churn() -> None:
        receivers = []
        for index in range(200):

            async def receiver_(**kwargs: Any) -> None:
                request_id.set("churned")

            def sync_receiver(**kwargs: Any) -> None:
                pass

            receivers.append((receiver_, sync_receiver))
            signal.connect(receiver_, sender=Sender)
            signal.connect(sync_receiver, sender=Sender)
            if index % 2:
                signal.disconnect(receiver_, sender=Sender)
            if stop.is_set():
                break

    async def dispatch_repeatedly() -> None:
        for _ in range(200):
            try:
                await signal.asend(sender=Sender)
            except BaseException as error:  # noqa: BLE001 -- collected, asserted below
                errors.append(error)

    churner = threading.Thread(target=churn)
    churner.start()
    try:
        run(dispatch_repeatedly())
    finally:
        stop.set()
        churner.join()
    assert errors == []


@pytest.mark.parametrize("target", ["ContextVar", "Local attribute"])
def test_a_conflict_policy_returning_missing_raises_for_a_context_var_and_deletes_an_attribute(
    run: Runner, target: str
) -> None:
    signal = StructuredSignal(context="isolated", on_conflict=lambda conflict: MISSING)

    def write(value: str) -> None:
        if target == "ContextVar":
            user.set(value)
        else:
            request_state.user_id = value

    async def one(**kwargs: Any) -> None:
        write("a")

    async def other(**kwargs: Any) -> None:
        write("b")
        request_id.set("not merged when the dispatch raises")

    signal.connect(one)
    signal.connect(other)

    async def caller() -> tuple[object, object]:
        write("base")
        await signal.asend(sender=None)
        return getattr(request_state, "user_id", MISSING), request_id.get(None)

    async def raising_caller() -> str:
        write("base")
        before = snapshot()
        with pytest.raises(ValueError, match="MISSING for the ContextVar 'user'") as raised:
            await signal.asend(sender=None)
        assert_context_is(before)
        return str(raised.value)

    if target == "Local attribute":
        assert run(caller()) == (MISSING, "not merged when the dispatch raises")
    else:
        assert "return the value to keep" in run(raising_caller())


@pytest.mark.parametrize("timeout", [10**400, float("inf"), -float("inf")])
def test_a_timeout_the_event_loop_cannot_compute_a_deadline_from_raises_value_error(
    timeout: Any,
) -> None:
    with pytest.raises(ValueError, match="finite number of seconds"):
        StructuredSignal(timeout=timeout)
    with pytest.raises(ValueError, match="finite number of seconds"):
        upgrade(dispatch.Signal(), timeout=timeout)


class Handler:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def on_sync(self, **kwargs: Any) -> None:
        self.calls.append("sync")

    async def on_async(self, **kwargs: Any) -> None:
        self.calls.append("async")


class TracedSignal(StructuredSignal):
    """A signal whose live receivers come wrapped, as sentry-sdk's signals_spans wraps them."""

    def _live_receivers(self, sender: Any) -> Any:
        found: Any = super()._live_receivers(sender)
        if django.VERSION < (5, 0):
            return [traced(receiver) for receiver in found]
        sync_receivers, async_receivers = found
        return [traced(r) for r in sync_receivers], [traced(r) for r in async_receivers]


def traced(receiver: Callable[..., Any]) -> Callable[..., Any]:
    if iscoroutinefunction(receiver):

        @functools.wraps(receiver)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            return await receiver(*args, **kwargs)

        return async_wrapper

    @functools.wraps(receiver)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return receiver(*args, **kwargs)

    return wrapper


@pytest.mark.parametrize("traced_signal", [False, True], ids=["plain", "traced"])
@pytest.mark.parametrize("method", METHODS)
def test_receivers_stay_called_after_another_receiver_disconnected_itself_mid_dispatch(
    run: Runner, method: str, traced_signal: bool
) -> None:
    signal = TracedSignal() if traced_signal else StructuredSignal()
    handler = Handler()

    def one_shot(**kwargs: Any) -> None:
        signal.disconnect(one_shot)

    signal.connect(one_shot)
    # Weak, as Django connects by default: a WeakMethod gives a new bound method each time.
    signal.connect(handler.on_sync)
    signal.connect(handler.on_async)
    dispatch_and_read(run, signal, method, lambda: None)
    assert handler.calls == ["sync", "async"]


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("method", METHODS)
def test_receivers_looked_up_while_another_thread_disconnects_are_checked_by_their_own_keys(
    run: Runner, method: str, kind: str
) -> None:
    # Another thread's disconnect() lands just as the dispatch has looked its
    # receivers up: their lookup keys must come from the same receivers they
    # were found in, or a disconnected receiver is taken for its neighbour.
    disconnect_while_looking_up: list[Callable[[], object]] = []

    class RacedSignal(StructuredSignal):
        def _live_receivers(self, sender: Any) -> Any:
            found = super()._live_receivers(sender)
            if disconnect_while_looking_up:
                in_plain_thread(disconnect_while_looking_up.pop())
            return found

    signal = RacedSignal()
    called: list[str] = []

    def receiver_of_the_kind(name: str) -> Callable[..., Any]:
        def sync_receiver(**kwargs: Any) -> None:
            called.append(name)

        async def async_receiver(**kwargs: Any) -> None:
            called.append(name)

        return sync_receiver if kind == "sync" else async_receiver

    gone, victim, bystander = map(receiver_of_the_kind, ["gone", "victim", "bystander"])

    def disconnects(**kwargs: Any) -> None:
        called.append("disconnects")
        signal.disconnect(victim)

    for connected in (gone, disconnects, victim, bystander):
        signal.connect(connected)
    disconnect_while_looking_up.append(lambda: signal.disconnect(gone))
    dispatch_and_read(run, signal, method, lambda: None)
    assert called == ["disconnects", "bystander"]


class SenderA:
    pass


class SenderB:
    pass


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("other", ["another sender", "another dispatch_uid"])
@pytest.mark.parametrize("method", METHODS)
def test_a_receiver_disconnected_for_the_sender_mid_dispatch_stops_though_connected_otherwise(
    run: Runner, method: str, other: str, kind: str
) -> None:
    signal = StructuredSignal()
    called: list[str] = []

    def victim(**kwargs: Any) -> None:
        called.append("victim")

    async def async_victim(**kwargs: Any) -> None:
        called.append("victim")

    target = victim if kind == "sync" else async_victim

    def disconnects(**kwargs: Any) -> None:
        signal.disconnect(target, sender=SenderA, dispatch_uid="first")

    signal.connect(disconnects, sender=SenderA)
    signal.connect(target, sender=SenderA, dispatch_uid="first")
    if other == "another sender":
        signal.connect(target, sender=SenderB, dispatch_uid="second")
        expected: list[str] = []
    else:
        # Django calls a receiver connected twice for the sender twice: once
        # is left after one of the two connections went.
        signal.connect(target, sender=SenderA, dispatch_uid="second")
        expected = ["victim"]

    if method.startswith("a"):

        async def caller() -> None:
            await getattr(signal, method)(sender=SenderA)

        run(caller())
    else:
        in_plain_thread(lambda: getattr(signal, method)(sender=SenderA))
    assert called == expected


class Causes:
    """An exception raised the way a receiver may: from a cause, while handling another."""

    def __init__(self) -> None:
        self.cause = LookupError("cause")
        self.context = KeyError("context")
        self.raised: list[BaseException] = []

    def raise_it(self) -> None:
        try:
            raise self.context
        except KeyError:
            error = ValueError("effect")
            self.raised.append(error)
            raise error from self.cause

    def receivers(self, kind: str) -> tuple[Callable[..., Any], Callable[..., Any]]:
        def failing(**kwargs: Any) -> None:
            self.raise_it()

        async def async_failing(**kwargs: Any) -> None:
            await asyncio.sleep(0)
            self.raise_it()

        async def sibling(**kwargs: Any) -> None:
            await asyncio.sleep(0)

        return (failing if kind == "sync" else async_failing), sibling


def raised_by(signal: dispatch.Signal, method: str, run: Runner) -> BaseException:
    async def async_caller() -> None:
        await getattr(signal, method)(sender=None)

    def call() -> None:
        if method == "asend":
            run(async_caller())
        else:
            in_plain_thread(lambda: signal.send(sender=None))

    with pytest.raises(ValueError, match="effect") as raised:
        call()
    return raised.value


@pytest.mark.parametrize("setup", ["alone", "beside a sibling", "with a timeout"])
@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("method", ["send", "asend"])
def test_a_receivers_exception_reaches_the_caller_with_its_own_cause_context_and_traceback(
    run: Runner, method: str, kind: str, setup: str
) -> None:
    causes = Causes()
    failing, sibling = causes.receivers(kind)
    signal = StructuredSignal(timeout=5.0 if setup == "with a timeout" else None)
    signal.connect(failing)
    if setup == "beside a sibling":
        signal.connect(sibling)

    error = raised_by(signal, method, run)
    assert error is causes.raised[-1]
    assert error.__cause__ is causes.cause
    assert error.__context__ is causes.context
    assert error.__suppress_context__ is True
    frames = [frame.name for frame in traceback.extract_tb(error.__traceback__)]
    assert failing.__name__ in frames
    assert "raise_it" in frames

    if django.VERSION < (5, 0) or kind == "sync" or setup == "with a timeout":
        return  # stock Django: no async receivers before 5.0, no timeout
    # Stock Django keeps the cause too; 6.1 (TaskGroup) replaces the context
    # with its ExceptionGroup, 5.2 (gather) keeps it, as we do.
    stock = dispatch.Signal()
    stock.connect(failing)
    if setup == "beside a sibling":
        stock.connect(sibling)
    stock_error = raised_by(stock, method, run)
    assert stock_error.__cause__ is causes.cause
    assert stock_error.__suppress_context__ is True
    if django.VERSION >= (6, 1):
        assert isinstance(stock_error.__context__, BaseExceptionGroup)
    else:
        assert stock_error.__context__ is causes.context


# Sync send()/send_robust() (SPEC 3.1, revision 2): sync receivers are called
# in the caller's own context, from as many frames as Django's own send(), so
# each case below holds for a plain django.dispatch.Signal as for ours.
SIGNAL_KINDS = ("django", *MODES)
SYNC_METHODS = ("send", "send_robust")


def make_signal(kind: str, use_caching: bool = False) -> dispatch.Signal:
    if kind == "django":
        return dispatch.Signal(use_caching=use_caching)
    return StructuredSignal(use_caching=use_caching, context=kind)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", SIGNAL_KINDS)
@pytest.mark.parametrize("method", SYNC_METHODS)
def test_a_token_set_by_one_sends_receiver_is_reset_by_a_later_sends_receiver_as_under_django(
    method: str, kind: str
) -> None:
    # WSGI: request_started's receiver sets, request_finished's resets.
    started, finished = make_signal(kind), make_signal(kind)
    tokens: list[contextvars.Token[str]] = []

    def open_request(**kwargs: Any) -> None:
        tokens.append(request_id.set("req-1"))

    def close_request(**kwargs: Any) -> None:
        request_id.reset(tokens.pop())

    async def also_async(**kwargs: Any) -> None:
        user.set("alice")

    started.connect(open_request)
    finished.connect(close_request)
    if kind != "django":  # Django 4.2 would not await it
        started.connect(also_async)

    def request() -> tuple[object, ...]:
        getattr(started, method)(sender=None)
        during = request_id.get("<unset>")
        responses = getattr(finished, method)(sender=None)
        return during, request_id.get("<unset>"), responses

    during, after, responses = in_plain_thread(request)
    assert (during, after) == ("req-1", "<unset>")
    assert responses == [(close_request, None)]  # send_robust answered no ValueError


def receiver_warning_and_depth(
    signal: dispatch.Signal, method: str, stacklevel: int
) -> tuple[tuple[str, int], int]:
    """The (file, line) of a warning a receiver raises with `stacklevel`, and
    how many frames lie between the receiver and this function."""
    depths: list[int] = []
    caller = sys._getframe().f_code

    def warns(**kwargs: Any) -> None:
        frame, depth = sys._getframe(), 0
        while frame.f_code is not caller:
            frame, depth = frame.f_back, depth + 1  # type: ignore[assignment]
        depths.append(depth)
        warnings.warn("from a receiver", UserWarning, stacklevel=stacklevel)

    signal.connect(warns)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        getattr(signal, method)(sender=None)  # where a warning counted for Django's lands
    (warning,) = caught
    return (warning.filename, warning.lineno), depths[0]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("method", SYNC_METHODS)
@pytest.mark.parametrize("stacklevel", [1, 2, 3, 4])
def test_a_receivers_warning_stacklevel_points_where_it_does_under_djangos_own_signal(
    stacklevel: int, method: str, mode: str
) -> None:
    djangos, ours = (
        receiver_warning_and_depth(make_signal(kind), method, stacklevel)
        for kind in ("django", mode)
    )
    (djangos_place, djangos_depth), (our_place, our_depth) = djangos, ours
    assert our_depth == djangos_depth
    if djangos_place[0] == dispatch.dispatcher.__file__:
        # A level that lands inside Django's send() lands inside ours.
        assert our_place[0] == structured_signals._signal.__file__
    else:
        assert our_place == djangos_place
    # Below 3.12, Django 4.2's send() calls receivers in a comprehension, a
    # frame of its own: level 3 is its send(), 4 the caller.
    caller_level = 4 if django.VERSION < (5, 0) and sys.version_info < (3, 12) else 3
    if stacklevel == caller_level:
        assert our_place[0] == __file__


def test_djangos_complex_setting_warning_points_at_the_override_settings_line_when_upgraded() -> (
    None
):
    from django.test import override_settings
    from django.test.signals import setting_changed

    original = type(setting_changed)
    places = []
    try:
        for structured in (False, True):
            if structured:
                upgrade(setting_changed)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                line = sys._getframe().f_lineno + 1
                with override_settings(DATABASES={}):
                    pass
            (warning,) = (w for w in caught if "DATABASES" in str(w.message))
            places.append((warning.filename, warning.lineno))
    finally:
        setting_changed.__class__ = original
    assert places == [(__file__, line)] * 2


@pytest.mark.parametrize("kind", SIGNAL_KINDS)
@pytest.mark.parametrize("method", SYNC_METHODS)
def test_a_failing_sends_sync_receivers_writes_stay_in_the_caller_as_under_django(
    method: str, kind: str
) -> None:
    signal = make_signal(kind)

    def writes(**kwargs: Any) -> None:
        request_id.set("written")
        request_state.user_id = 5

    def fails(**kwargs: Any) -> None:
        raise ReceiverError

    signal.connect(writes)
    signal.connect(fails)

    def caller() -> tuple[object, object]:
        try:
            getattr(signal, method)(sender=None)
        except ReceiverError:
            assert method == "send"
        return request_id.get(None), getattr(request_state, "user_id", None)

    assert in_plain_thread(caller) == ("written", 5)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("method", SYNC_METHODS)
def test_a_send_nested_in_a_sync_receiver_writes_into_the_callers_context_as_it_runs(
    method: str, mode: str
) -> None:
    outer, inner = StructuredSignal(context=mode), StructuredSignal(context=mode)  # type: ignore[arg-type]
    seen_by_later_receiver: list[tuple[object, object]] = []

    def sets_user(**kwargs: Any) -> None:
        user.set("alice")

    async def sets_tenant(**kwargs: Any) -> None:
        await asyncio.sleep(0)
        request_state.tenant = "acme"

    def sends_inner(**kwargs: Any) -> None:
        getattr(inner, method)(sender=None)

    def reads(**kwargs: Any) -> None:
        seen_by_later_receiver.append((user.get(None), getattr(request_state, "tenant", None)))

    inner.connect(sets_user)
    inner.connect(sets_tenant)
    outer.connect(sends_inner)
    outer.connect(reads)

    def caller() -> tuple[object, object]:
        getattr(outer, method)(sender=None)
        return user.get(None), getattr(request_state, "tenant", None)

    assert in_plain_thread(caller) == ("alice", "acme")
    assert seen_by_later_receiver == [("alice", "acme")]


@pytest.mark.parametrize("use_caching", [False, True])
@pytest.mark.parametrize("method", SYNC_METHODS)
def test_a_sync_send_filters_receivers_by_sender_as_django_does(
    method: str, use_caching: bool
) -> None:
    class Ordered:
        pass

    class Shipped:
        pass

    def for_any(**kwargs: Any) -> str:
        return "any"

    def for_ordered(**kwargs: Any) -> str:
        return "ordered"

    answers = {}
    for kind in SIGNAL_KINDS:
        signal = make_signal(kind, use_caching)
        signal.connect(for_any)
        signal.connect(for_ordered, sender=Ordered)
        send = getattr(signal, method)
        answers[kind] = [
            [response for _, response in send(sender=sender)]
            for sender in (Ordered, Shipped, Ordered, Shipped)  # twice: the cache too
        ]
    assert answers["django"] == [["any", "ordered"], ["any"]] * 2
    assert answers["shared"] == answers["isolated"] == answers["django"]
