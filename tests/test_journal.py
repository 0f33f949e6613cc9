"""The shared-mode write journal: net effects, interleavings, transparent stepping."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import decimal
import gc
import logging
import threading
import traceback
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import django
import pytest
import sentry_sdk
from asgiref.local import Local
from asgiref.sync import markcoroutinefunction, sync_to_async
from django.dispatch import Signal
from django.utils import timezone, translation
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import get_current_span
from support import (
    LOOP_FACTORIES,
    Flag,
    Runner,
    asend_checking_context_when_cancelled,
    in_plain_thread,
    runner,
)

import structured_signals._journal
from structured_signals import MISSING, Conflict, ContextConflictError, StructuredSignal
from structured_signals._compat import TaskGroup, timeout_at
from structured_signals._context import changes
from structured_signals._dispatch import describe

if TYPE_CHECKING:
    from collections.abc import Callable

span: contextvars.ContextVar[str] = contextvars.ContextVar("span", default="request")
counter: contextvars.ContextVar[int] = contextvars.ContextVar("counter", default=0)
user: contextvars.ContextVar[str] = contextvars.ContextVar("user", default="anonymous")


def two_receivers(make: Callable[[str], Any]) -> StructuredSignal:
    """A shared-mode signal with receivers make("1") and make("2"), connected strongly."""
    signal = StructuredSignal()
    for name in ("1", "2"):
        signal.connect(make(name), weak=False)
    return signal


def translating(language: str) -> Any:
    async def receiver(**kwargs: Any) -> None:
        with translation.override(language):
            token = span.set(f"receiver-{language}")
            await asyncio.sleep(0)
            span.reset(token)

    return receiver


@pytest.mark.parametrize("method", ["asend", "asend_robust", "send", "send_robust"])
def test_two_receivers_overriding_the_language_and_a_span_around_an_await_leave_the_callers(
    run: Runner, method: str
) -> None:
    # The issue's table: Django 6.1's one shared context leaves de/receiver-de.
    signal = StructuredSignal()
    signal.connect(translating("de"), weak=False)
    signal.connect(translating("fr"), weak=False)

    def sync_caller() -> tuple[str | None, str]:
        translation.activate("en")
        getattr(signal, method)(sender=None)
        return translation.get_language(), span.get()

    async def async_caller() -> tuple[str | None, str]:
        translation.activate("en")
        await getattr(signal, method)(sender=None)
        return translation.get_language(), span.get()

    if method.startswith("a"):
        assert run(async_caller()) == ("en", "request")
    else:
        assert in_plain_thread(sync_caller) == ("en", "request")


def test_receivers_see_each_others_temporary_values_while_they_run(run: Runner) -> None:
    seen: list[str] = []

    def make(name: str) -> Any:
        async def receiver(**kwargs: Any) -> None:
            token = span.set(f"receiver-{name}")
            await asyncio.sleep(0)
            seen.append(span.get())
            span.reset(token)

        return receiver

    signal = two_receivers(make)

    async def caller() -> str:
        await signal.asend(sender=None)
        return span.get()

    assert run(caller()) == "request"
    # Both set before either resumed: the first sees the second's value, and
    # the second what the first's reset left (one shared context, as Django 6.1).
    assert seen == ["receiver-2", "request"]


def test_two_receivers_overriding_the_time_zone_around_an_await_leave_the_callers(
    run: Runner,
) -> None:
    def make(name: str) -> Any:
        async def receiver(**kwargs: Any) -> None:
            with timezone.override(f"Etc/GMT-{name}"):
                await asyncio.sleep(0)

        return receiver

    signal = two_receivers(make)

    async def caller() -> tuple[str, bool]:
        timezone.activate("Europe/Paris")
        await signal.asend(sender=None)
        outside = str(timezone.get_current_timezone())
        timezone.deactivate()
        # Unset before the dispatch: the receivers' overrides leave it unset.
        await signal.asend(sender=None)
        return outside, timezone.get_current_timezone() is timezone.get_default_timezone()

    assert run(caller()) == ("Europe/Paris", True)


def test_two_receivers_in_decimal_localcontexts_around_an_await_leave_the_callers(
    run: Runner,
) -> None:
    def make(name: str) -> Any:
        async def receiver(**kwargs: Any) -> None:
            with decimal.localcontext() as local:
                local.prec = 40 + int(name)
                await asyncio.sleep(0)

        return receiver

    signal = two_receivers(make)

    async def caller() -> tuple[bool, int]:
        callers = decimal.getcontext()
        callers.prec = 12
        await signal.asend(sender=None)
        return decimal.getcontext() is callers, decimal.getcontext().prec

    assert run(caller()) == (True, 12)


def test_two_receivers_in_opentelemetry_spans_around_an_await_leave_the_callers_span(
    run: Runner,
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer(__name__)

    def make(name: str) -> Any:
        async def receiver(**kwargs: Any) -> None:
            with tracer.start_as_current_span(f"receiver-{name}"):
                await asyncio.sleep(0)

        return receiver

    signal = two_receivers(make)

    async def caller() -> bool:
        with tracer.start_as_current_span("request") as request:
            await signal.asend(sender=None)
            with tracer.start_as_current_span("after"):
                pass
            return get_current_span() is request

    assert run(caller())
    finished = {finished.name: finished for finished in exporter.get_finished_spans()}
    after_parent = finished["after"].parent
    assert after_parent is not None
    assert after_parent.span_id == finished["request"].context.span_id


def test_two_receivers_in_sentry_scopes_around_an_await_leave_the_callers_scopes(
    run: Runner,
) -> None:
    def make(name: str) -> Any:
        scope = sentry_sdk.isolation_scope if name == "1" else sentry_sdk.new_scope

        async def receiver(**kwargs: Any) -> None:
            with scope() as entered:
                entered.set_tag("receiver", name)
                await asyncio.sleep(0)

        return receiver

    signal = two_receivers(make)

    async def caller() -> bool:
        with sentry_sdk.isolation_scope() as isolation:
            current = sentry_sdk.get_current_scope()
            await signal.asend(sender=None)
            return (
                sentry_sdk.get_isolation_scope() is isolation
                and sentry_sdk.get_current_scope() is current
            )

    assert run(caller())


@pytest.mark.parametrize("restorer_first", [True, False])
@pytest.mark.parametrize("restorer_pauses", [0, 1, 2])
@pytest.mark.parametrize("setter_pauses", [(0, 0), (0, 1), (1, 0), (1, 2), (2, 1)])
def test_a_permanent_write_wins_over_a_restorer_of_the_same_variable_whatever_the_interleaving(
    run: Runner, restorer_first: bool, restorer_pauses: int, setter_pauses: tuple[int, int]
) -> None:
    async def restorer(**kwargs: Any) -> None:
        token = user.set("temporary")
        for _ in range(restorer_pauses):
            await asyncio.sleep(0)
        user.reset(token)

    async def setter(**kwargs: Any) -> None:
        before, after = setter_pauses
        for _ in range(before):
            await asyncio.sleep(0)
        user.set("alice")
        for _ in range(after):
            await asyncio.sleep(0)

    signal = StructuredSignal()
    for receiver in (restorer, setter) if restorer_first else (setter, restorer):
        signal.connect(receiver)

    async def caller() -> str:
        await signal.asend(sender=None)
        return user.get()

    assert run(caller()) == "alice"


@pytest.mark.parametrize("method", ["asend", "send"])
def test_receivers_incrementing_a_counter_one_after_the_other_count_every_increment(
    run: Runner, method: str
) -> None:
    locks: list[asyncio.Lock] = []

    def lock() -> asyncio.Lock:
        # Created in the loop that runs the receivers (bound to it below 3.10).
        if not locks:
            locks.append(asyncio.Lock())
        return locks[0]

    async def increments_twice(**kwargs: Any) -> None:
        # Two writes across awaits, the one receiver after the other.
        async with lock():
            counter.set(counter.get() + 1)
            await asyncio.sleep(0)
            counter.set(counter.get() + 1)

    async def increments_once(**kwargs: Any) -> None:
        async with lock():
            await asyncio.sleep(0)
            counter.set(counter.get() + 1)

    signal = StructuredSignal()
    signal.connect(increments_once)
    signal.connect(increments_twice)
    signal.connect(lambda **kwargs: None, weak=False)  # a sync receiver too

    def sync_caller() -> int:
        counter.set(1)
        signal.send(sender=None)
        return counter.get()

    async def async_caller() -> int:
        counter.set(1)
        await signal.asend(sender=None)
        return counter.get()

    result = run(async_caller()) if method == "asend" else in_plain_thread(sync_caller)
    assert result == 4


def interleaved_setter(name: str) -> Any:
    async def receiver(**kwargs: Any) -> None:
        user.set(f"{name}-draft")
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        user.set(name)

    receiver.__qualname__ = f"setter_{name}"
    return receiver


def interleaved_signal(on_conflict: Any) -> tuple[StructuredSignal, list[Any]]:
    signal = StructuredSignal(on_conflict=on_conflict)
    receivers = [interleaved_setter("bob"), interleaved_setter("alice")]
    for receiver in receivers:
        signal.connect(receiver, weak=False)
    return signal, receivers


def test_two_receivers_setting_one_variable_for_good_across_interleaved_awaits_conflict(
    run: Runner,
) -> None:
    signal, (bob, alice) = interleaved_signal("raise")

    async def caller() -> None:
        await signal.asend(sender=None)

    with pytest.raises(ContextConflictError) as raised:
        run(caller())
    (conflict,) = raised.value.conflicts
    assert conflict.variable is user
    assert conflict.base is MISSING
    assert conflict.writers == ((describe(bob), "bob"), (describe(alice), "alice"))
    assert "user" in str(raised.value)
    assert "'bob'" in str(raised.value)
    assert "'alice'" in str(raised.value)


@pytest.mark.parametrize(("policy", "expected"), [("first", "bob"), ("last", "alice")])
def test_interleaved_writers_are_settled_by_connection_order(
    run: Runner, policy: str, expected: str
) -> None:
    signal, _ = interleaved_signal(policy)

    async def caller() -> str:
        await signal.asend(sender=None)
        return user.get()

    assert run(caller()) == expected


def test_a_callable_policy_gets_interleaved_writers_in_connection_order(run: Runner) -> None:
    conflicts: list[Conflict] = []

    def decide(conflict: Conflict) -> object:
        conflicts.append(conflict)
        return "carol"

    signal, (bob, alice) = interleaved_signal(decide)

    async def caller() -> str:
        await signal.asend(sender=None)
        return user.get()

    assert run(caller()) == "carol"
    assert [writers for conflict in conflicts for writers in conflict.writers] == [
        (describe(bob), "bob"),
        (describe(alice), "alice"),
    ]


def test_interleaved_writers_that_agree_do_not_conflict_and_the_first_ones_object_is_kept(
    run: Runner,
) -> None:
    values: list[str] = []

    def make(name: str) -> Any:
        async def receiver(**kwargs: Any) -> None:
            user.set(f"draft-{name}")
            await asyncio.sleep(0)
            # Equal, not identical: a write of the object the variable already
            # holds changes nothing in the context (README, "Choices").
            values.append("".join(["sa", "me"]))
            user.set(values[-1])

        return receiver

    signal = two_receivers(make)

    async def caller() -> str:
        await signal.asend(sender=None)
        return user.get()

    assert run(caller()) is values[0]


def test_nested_dispatches_inside_receivers_hand_on_only_net_effects(run: Runner) -> None:
    inner = StructuredSignal()
    inner.connect(translating("de"), weak=False)
    inner.connect(translating("fr"), weak=False)

    async def logs_in(**kwargs: Any) -> None:
        await asyncio.sleep(0)
        user.set("alice")

    inner.connect(logs_in)

    async def dispatches_inside_a_span(**kwargs: Any) -> None:
        token = span.set("outer")
        with translation.override("it"):
            await inner.asend(sender=None)
        span.reset(token)

    outer = StructuredSignal()
    outer.connect(dispatches_inside_a_span)
    outer.connect(translating("nl"), weak=False)

    async def caller() -> tuple[str | None, str, str]:
        translation.activate("en")
        await outer.asend(sender=None)
        return translation.get_language(), span.get(), user.get()

    assert run(caller()) == ("en", "request", "alice")


class ReceiverError(Exception):
    pass


def test_a_failed_receivers_net_effects_count_in_robust_shared_dispatch(run: Runner) -> None:
    async def fails_after_writing(**kwargs: Any) -> None:
        user.set("set before failing")
        with translation.override("de"):
            await asyncio.sleep(0)
            raise ReceiverError

    signal = StructuredSignal()
    signal.connect(fails_after_writing)
    signal.connect(translating("fr"), weak=False)

    async def caller() -> tuple[list[Any], str | None, str, str]:
        translation.activate("en")
        responses = await signal.asend_robust(sender=None)
        return [type(r) for _, r in responses], translation.get_language(), span.get(), user.get()

    types, language, seen_span, seen_user = run(caller())
    assert types == [ReceiverError, type(None)]
    assert (language, seen_span, seen_user) == ("en", "request", "set before failing")


def test_what_a_logging_handler_writes_while_a_robust_dispatch_logs_a_failure_is_its_receivers(
    run: Runner,
) -> None:
    logged: contextvars.ContextVar[str] = contextvars.ContextVar("logged", default="nothing")

    class Remembering(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            logged.set(record.getMessage())

    async def fails_last(**kwargs: Any) -> None:
        for _ in range(3):
            await asyncio.sleep(0)  # past every step of the other receiver
        raise ReceiverError

    signal = StructuredSignal()
    signal.connect(translating("fr"), weak=False)
    signal.connect(fails_last)
    handler = Remembering()
    logger = logging.getLogger("django.dispatch")
    logger.addHandler(handler)

    async def caller() -> str:
        await signal.asend_robust(sender=None)
        return logged.get()

    try:
        assert run(caller()).startswith("Error calling ")
    finally:
        logger.removeHandler(handler)


class CtxAsyncHandler:
    """Django 6.1's TestReceiversContextVarsSharing receiver, as it is there."""

    def __init__(self) -> None:
        self.values: list[int] = []

    async def __call__(self, **kwargs: Any) -> int:
        counter.set(counter.get() + 1)
        self.values.append(counter.get())
        return counter.get()


class CtxSyncHandler:
    def __init__(self) -> None:
        self.values: list[int] = []

    def __call__(self, **kwargs: Any) -> int:
        counter.set(counter.get() + 1)
        self.values.append(counter.get())
        return counter.get()


@pytest.mark.parametrize("method", ["asend", "asend_robust"])
@pytest.mark.parametrize("kinds", ["async", "sync", "mix"])
def test_djangos_receivers_context_vars_sharing_scenario(
    run: Runner, method: str, kinds: str
) -> None:
    first = CtxSyncHandler() if kinds in ("sync", "mix") else CtxAsyncHandler()
    second = CtxSyncHandler() if kinds == "sync" else CtxAsyncHandler()
    signal = StructuredSignal()
    signal.connect(first)
    signal.connect(second)

    async def caller() -> int:
        counter.set(1)
        await getattr(signal, method)(sender=None)
        return counter.get()

    assert run(caller()) == 3
    assert sorted([*first.values, *second.values]) == [2, 3]


def test_a_step_that_writes_nothing_costs_no_diff(
    run: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    diffed: list[object] = []

    def counting(before: contextvars.Context, after: contextvars.Context) -> Any:
        diffed.append(after)
        return changes(before, after)

    monkeypatch.setattr(structured_signals._journal, "changes", counting)

    async def reads_only(**kwargs: Any) -> str:
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return span.get()

    async def writes_once(**kwargs: Any) -> None:
        await asyncio.sleep(0)
        user.set("alice")
        await asyncio.sleep(0)

    signal = StructuredSignal()
    for receiver in (reads_only, reads_only, writes_once):
        signal.connect(receiver, weak=False)

    async def caller() -> str:
        await signal.asend(sender=None)
        return user.get()

    assert run(caller()) == "alice"
    assert len(diffed) == 1


ORM_LOCAL = Local()


def test_a_receivers_sync_to_async_does_not_undo_a_siblings_write_made_while_its_thread_ran(
    run: Runner,
) -> None:
    # asgiref copies the context into the thread and, once it returns, sets
    # back every variable that differs: a sibling's write made meanwhile
    # would be undone in the shared context. The thread's own writes count.
    wrote = threading.Event()

    def in_thread() -> None:
        assert wrote.wait(5)
        counter.set(7)
        ORM_LOCAL.fetched = "in the thread"

    async def orm_like(**kwargs: Any) -> None:
        await sync_to_async(in_thread)()

    async def sibling(**kwargs: Any) -> None:
        await asyncio.sleep(0)
        user.set("alice")
        ORM_LOCAL.language = "fr"
        wrote.set()

    signal = StructuredSignal()
    signal.connect(orm_like)
    signal.connect(sibling)

    async def caller() -> tuple[str, str, int, str]:
        user.set("caller")
        ORM_LOCAL.language = "en"
        await signal.asend(sender=None)
        return user.get(), ORM_LOCAL.language, counter.get(), ORM_LOCAL.fetched

    assert run(caller()) == ("alice", "fr", 7, "in the thread")


def test_receivers_sharing_a_context_can_each_be_in_sync_to_async_at_once_outside_a_request(
    run: Runner,
) -> None:
    # No ThreadSensitiveContext (a script, an async test): asgiref runs
    # thread-sensitive calls in one thread and flags the task that uses it,
    # in its context. The flag is each receiver's own, as in a task of its
    # own (Django 5.2's gather): the second one queues, it is no deadlock.
    second_started = threading.Event()

    def first_in_thread() -> str:
        assert second_started.wait(5)
        return "first"

    async def first(**kwargs: Any) -> str:
        return await sync_to_async(first_in_thread)()

    async def second(**kwargs: Any) -> str:
        await asyncio.sleep(0)
        second_started.set()
        return await sync_to_async(lambda: "second")()

    signal = StructuredSignal()
    signal.connect(first)
    signal.connect(second)
    responses = run(signal.asend(sender=None))
    assert [response for _, response in responses] == ["first", "second"]


# SPEC 3.8: the journal steps a receiver in its own task without showing.


def test_a_journaled_receiver_runs_in_a_task_of_its_own(run: Runner) -> None:
    tasks: list[asyncio.Task[Any] | None] = []

    def make(name: str) -> Any:
        async def receiver(**kwargs: Any) -> None:
            tasks.append(asyncio.current_task())
            await asyncio.sleep(0)
            tasks.append(asyncio.current_task())

        return receiver

    signal = two_receivers(make)

    async def caller() -> asyncio.Task[Any] | None:
        await signal.asend(sender=None)
        return asyncio.current_task()

    caller_task = run(caller())
    assert caller_task not in tasks
    assert len(set(map(id, tasks))) == 2
    assert tasks[0] is tasks[2]


def test_a_journaled_receivers_task_shows_where_it_is_suspended_as_a_task_of_its_own(
    run: Runner,
) -> None:
    # What debuggers and `Task.print_stack()` read of a suspended task.
    stacks: list[list[Any]] = []
    waiting: list[asyncio.Task[Any]] = []
    resume = Flag()

    async def waits(**kwargs: Any) -> None:
        task = asyncio.current_task()
        assert task is not None
        waiting.append(task)
        await resume.wait()

    async def looks(**kwargs: Any) -> None:
        await asyncio.sleep(0)  # past the eager first step
        stacks.append([frame.f_code for frame in waiting[0].get_stack()])
        awaited: Any = waiting[0].get_coro()
        codes = []
        while awaited is not None and hasattr(awaited, "cr_await"):
            codes.append(awaited.cr_code)
            awaited = awaited.cr_await
        stacks.append(codes)
        resume.set()

    signal = StructuredSignal()
    signal.connect(waits)
    signal.connect(looks)
    run(signal.asend(sender=None))
    suspended_frames, awaited_coroutines = stacks
    assert len(suspended_frames) == 1
    assert suspended_frames[0] is awaited_coroutines[0]
    assert waits.__code__ in awaited_coroutines


def test_a_journaled_receivers_own_timeout_and_task_group_work_as_in_a_task(run: Runner) -> None:
    def make(name: str) -> Any:
        async def receiver(**kwargs: Any) -> str:
            async with TaskGroup() as group:
                child = group.create_task(asyncio.sleep(0, result=f"child-{name}"))
            try:
                async with timeout_at(asyncio.get_running_loop().time() + 0.01):
                    await asyncio.sleep(10)
            except TimeoutError:
                return child.result()
            return "not timed out"

        return receiver

    signal = two_receivers(make)

    async def caller() -> list[Any]:
        responses = await signal.asend(sender=None)
        return [response for _, response in responses]

    assert run(caller()) == ["child-1", "child-2"]


def test_a_cancellation_is_thrown_into_a_journaled_receiver_which_cleans_up(run: Runner) -> None:
    cleaned: list[str] = []
    started = Flag()

    def make(name: str) -> Any:
        async def receiver(**kwargs: Any) -> None:
            token = span.set(name)
            started.set()
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                cleaned.append(name)
                raise
            finally:
                span.reset(token)

        return receiver

    signal = two_receivers(make)

    async def caller() -> str:
        dispatch = asyncio.ensure_future(signal.asend(sender=None))
        await started.wait()
        await asyncio.sleep(0)
        dispatch.cancel()
        with pytest.raises(asyncio.CancelledError):
            await dispatch
        return span.get()

    assert run(caller()) == "request"
    assert sorted(cleaned) == ["1", "2"]


CANCEL_POINTS = [
    "sleep",
    "sync_to_async",
    "async generator",
    "async with",
    "nested dispatch",
    "nested receiver",
]


@pytest.mark.parametrize("point", CANCEL_POINTS)
def test_the_caller_cancelled_at_any_await_of_a_journaled_receiver_merges_nothing_leaves_no_task(
    run: Runner, point: str
) -> None:
    cleaned: list[str] = []
    dispatches: list[asyncio.Future[Any]] = []

    def reached(where: str) -> None:
        if where == point:
            dispatches[0].cancel()

    inner = StructuredSignal()

    async def nested_receiver(**kwargs: Any) -> None:
        user.set("nested")
        reached("nested receiver")
        await asyncio.sleep(0)

    inner.connect(nested_receiver)

    async def numbers() -> Any:
        for number in range(2):
            reached("async generator")
            await asyncio.sleep(0)
            yield number

    @contextlib.asynccontextmanager
    async def entered() -> Any:
        token = span.set("entered")
        reached("async with")
        await asyncio.sleep(0)
        try:
            yield
        finally:
            span.reset(token)

    def make(name: str) -> Any:
        async def receiver(**kwargs: Any) -> None:
            try:
                counter.set(int(name))
                reached("sleep")
                await asyncio.sleep(0)
                ORM_LOCAL.language = name
                reached("sync_to_async")
                await sync_to_async(lambda: None)()
                async for number in numbers():
                    counter.set(number)
                async with entered():
                    reached("nested dispatch")
                    await inner.asend(sender=None)
                await asyncio.sleep(0)
            finally:
                cleaned.append(name)

        return receiver

    signal = two_receivers(make)

    async def dispatch() -> None:
        await asyncio.sleep(0)  # an eager task starts at once: `dispatches` is set first
        await asend_checking_context_when_cancelled(signal)

    async def caller() -> set[asyncio.Task[Any]]:
        dispatches.append(asyncio.ensure_future(dispatch()))
        with pytest.raises(asyncio.CancelledError):
            await dispatches[0]
        return asyncio.all_tasks() - {asyncio.current_task()}

    assert run(caller()) == set()
    assert sorted(cleaned) == ["1", "2"]


def test_a_journaled_receivers_exception_keeps_its_cause_context_and_traceback(
    run: Runner,
) -> None:
    async def chains(**kwargs: Any) -> None:
        await asyncio.sleep(0)
        try:
            raise KeyError("cause")
        except KeyError as cause:
            raise ReceiverError("raised") from cause

    async def waits(**kwargs: Any) -> None:
        await asyncio.sleep(0)

    signal = StructuredSignal()
    signal.connect(chains)
    signal.connect(waits)

    async def caller() -> Any:
        # A robust response is the exception as the receiver raised it (how
        # asend re-raises it after the TaskGroup is the runner's business).
        responses = await signal.asend_robust(sender=None)
        return responses[0][1]

    error = run(caller())
    assert isinstance(error, ReceiverError)
    assert isinstance(error.__cause__, KeyError)
    assert error.__context__ is error.__cause__
    frames = [frame.name for frame in traceback.extract_tb(error.__traceback__)]
    assert frames[-1] == "chains"


wrapper_scope: contextvars.ContextVar[str] = contextvars.ContextVar("wrapper_scope", default="")
wrapper_span: contextvars.ContextVar[str] = contextvars.ContextVar("wrapper_span", default="")


def awaiting_task_factory(previous: Any) -> Any:
    """A task factory that runs each task's coroutine inside a wrapper awaiting it.

    As Sentry's and OpenTelemetry's asyncio integrations do: the wrapper
    sets variables of its own in the task's context, one around the await,
    one for good (the task's context dies with the task).
    """

    def factory(loop: asyncio.AbstractEventLoop, coroutine: Any, **kwargs: Any) -> Any:
        async def wrapper() -> Any:
            token = wrapper_scope.set(f"{wrapper_scope.get()}+task")
            wrapper_span.set(f"{wrapper_span.get()}+task")
            try:
                return await coroutine
            finally:
                wrapper_scope.reset(token)

        if previous is None:
            return asyncio.Task(wrapper(), loop=loop, **kwargs)
        return previous(loop, wrapper(), **kwargs)

    return factory


def test_a_task_factory_that_awaits_a_journaled_receivers_coroutine_keeps_its_writes_apart(
    run: Runner,
) -> None:
    def make(name: str) -> Any:
        async def receiver(**kwargs: Any) -> str:
            if name == "1":
                user.set("bob")
            await asyncio.sleep(0)
            if name == "1":
                user.set("alice")
            await asyncio.sleep(0)
            return name

        return receiver

    signal = two_receivers(make)

    async def caller() -> tuple[list[Any], str, str, str]:
        loop = asyncio.get_running_loop()
        loop.set_task_factory(awaiting_task_factory(loop.get_task_factory()))
        responses = await signal.asend(sender=None)
        responded = [response for _, response in responses]
        return responded, user.get(), wrapper_scope.get(), wrapper_span.get()

    assert run(caller()) == (["1", "2"], "alice", "", "")


class Held:
    """An object whose lifetime a test watches."""


temporaries = {name: contextvars.ContextVar[Held](f"temporary{name}") for name in ("1", "2")}


def test_a_journaled_receivers_locals_and_temporary_values_are_freed_when_asend_returns(
    run: Runner,
) -> None:
    held: list[weakref.ref[Held]] = []

    def make(name: str) -> Any:
        async def receiver(**kwargs: Any) -> None:
            local, temporary = Held(), Held()
            held.extend((weakref.ref(local), weakref.ref(temporary)))
            token = temporaries[name].set(temporary)
            await asyncio.sleep(0)
            temporaries[name].reset(token)
            await asyncio.sleep(0)

        return receiver

    signal = two_receivers(make)

    async def caller() -> list[bool]:
        await signal.asend(sender=None)
        # No reference cycle keeps a frame, a context or a journal alive.
        return [reference() is None for reference in held]

    gc.disable()
    try:
        assert run(caller()) == [True] * 4
    finally:
        gc.enable()


def test_a_keyboard_interrupt_in_a_journaled_receiver_leaves_the_loop(run: Runner) -> None:
    def make(name: str) -> Any:
        async def receiver(**kwargs: Any) -> None:
            await asyncio.sleep(0)
            if name == "2":
                raise KeyboardInterrupt

        return receiver

    signal = two_receivers(make)

    async def caller() -> None:
        await signal.asend(sender=None)

    with pytest.raises(KeyboardInterrupt):
        run(caller())


def test_djangos_own_signal_leaks_a_receivers_temporary_values_only_on_django_6_1() -> None:
    # What the journal fixes, measured on the installed Django (asyncio's loop).
    signal = Signal()
    signal.connect(translating("de"), weak=False)
    signal.connect(translating("fr"), weak=False)

    async def caller() -> tuple[str | None, str]:
        translation.activate("en")
        await signal.asend(sender=None)
        return translation.get_language(), span.get()

    if django.VERSION < (5, 0):
        assert not hasattr(signal, "asend")  # Django 4.2: no async dispatch at all
        return
    seen = runner(asyncio.new_event_loop)(caller())
    leaked = ("de", "receiver-de") if django.VERSION >= (6, 1) else ("en", "request")
    assert seen == leaked


# A hypothesis property: receivers run random programs of set / restore /
# await on two ContextVars and a Local attribute; the merged result must be
# what each receiver's net effect, computed by hand from the steps it took,
# gives under SPEC 3.2 and 4.

VARIABLES = [contextvars.ContextVar[int](f"journaled{index}") for index in range(2)]
LOCAL = Local()
SLOTS: list[int | str] = [0, 1, "attribute"]
INITIAL: dict[int | str, int] = {0: 1, "attribute": 1}


def read(slot: int | str) -> object:
    if isinstance(slot, int):
        return VARIABLES[slot].get(MISSING)
    return getattr(LOCAL, slot, MISSING)


@dataclass(frozen=True)
class Op:
    kind: str  # "set", "restore" (the receiver's latest set still in force) or "await"
    slot: int | str = 0
    value: int = 0


ops = st.one_of(
    st.builds(Op, kind=st.just("set"), slot=st.sampled_from(SLOTS), value=st.integers(1, 3)),
    st.just(Op("restore")),
    st.just(Op("await")),
)


class Trace:
    """Every step each receiver took that changed a slot, in the order they ran."""

    def __init__(self, receivers: int) -> None:
        self.steps = 0
        # by receiver: slot -> [first step, last step, value before first, value after last]
        self.runs: list[dict[int | str, list[Any]]] = [{} for _ in range(receivers)]
        # by receiver: each slot's value when it last suspended
        self.seen: list[dict[int | str, object] | None] = [None] * receivers

    def suspend(self, index: int) -> None:
        self.seen[index] = {slot: read(slot) for slot in SLOTS}

    def close_step(self, index: int, before: dict[int | str, object]) -> None:
        seen = self.seen[index]
        changed = [
            slot
            for slot, value in before.items()
            if read(slot) is not value
            # putting back what it saw, over a write it never saw, is no write
            and (seen is None or read(slot) is not seen[slot])
        ]
        if not changed:
            return
        self.steps += 1
        for slot in changed:
            run = self.runs[index].get(slot)
            if run is None:
                self.runs[index][slot] = [self.steps, self.steps, before[slot], read(slot)]
            else:
                run[1], run[3] = self.steps, read(slot)


def program_receiver(index: int, program: list[Op], trace: Trace) -> Any:
    async def receiver(**kwargs: Any) -> None:
        undo: list[tuple[int | str, Any]] = []
        before: dict[int | str, object] = {}
        for op in program:
            if op.kind == "await":
                trace.close_step(index, before)
                trace.suspend(index)
                await asyncio.sleep(0)
                before = {}
                continue
            if op.kind == "restore" and not undo:
                continue
            slot = op.slot if op.kind == "set" else undo[-1][0]
            before.setdefault(slot, read(slot))
            if op.kind == "restore":
                undo_slot, saved = undo.pop()
                if isinstance(undo_slot, int):
                    VARIABLES[undo_slot].reset(saved)
                elif saved is MISSING:
                    delattr(LOCAL, "attribute")
                else:
                    LOCAL.attribute = saved
            elif isinstance(slot, int):
                undo.append((slot, VARIABLES[slot].set(op.value)))
            else:
                undo.append((slot, read(slot)))
                LOCAL.attribute = op.value
        trace.close_step(index, before)

    return receiver


def expected_from(trace: Trace, policy: str) -> dict[int | str, object] | None:
    """SPEC 3.2 and 4 by hand: None for a conflict raised."""
    result: dict[int | str, object] = {slot: INITIAL.get(slot, MISSING) for slot in SLOTS}
    for slot in SLOTS:
        writers = [
            runs[slot]
            for runs in trace.runs
            if slot in runs and runs[slot][3] is not runs[slot][2]  # a net effect
        ]
        if not writers:
            continue
        in_time = sorted(writers, key=lambda run: run[0])
        one_after_another = all(a[1] < b[0] for a, b in zip(in_time, in_time[1:]))
        values = [run[3] for run in writers]  # connection order
        if one_after_another:
            result[slot] = in_time[-1][3]
        elif all(value == values[0] for value in values):
            result[slot] = values[0]
        elif policy == "raise":
            return None
        else:
            result[slot] = values[0] if policy == "first" else values[-1]
    return result


@settings(deadline=None, max_examples=250)
@given(
    programs=st.lists(st.lists(ops, max_size=8), min_size=2, max_size=4),
    loop=st.sampled_from(sorted(LOOP_FACTORIES)),
    policy=st.sampled_from(["raise", "first", "last"]),
)
def test_the_merge_is_each_receivers_net_effect_settled_by_interleaving(
    programs: list[list[Op]], loop: str, policy: str
) -> None:
    trace = Trace(len(programs))
    signal = StructuredSignal(on_conflict=policy)  # type: ignore[arg-type]
    for index, program in enumerate(programs):
        signal.connect(program_receiver(index, program, trace), weak=False)

    async def caller() -> dict[int | str, object]:
        VARIABLES[0].set(INITIAL[0])
        LOCAL.attribute = INITIAL["attribute"]
        try:
            await signal.asend(sender=None)
        except ContextConflictError:
            return {"conflict": True}
        return {slot: read(slot) for slot in SLOTS}

    seen = runner(LOOP_FACTORIES[loop])(caller())
    expected = expected_from(trace, policy)
    assert seen == ({"conflict": True} if expected is None else expected)


# What runs in a receiver's task outside its steps: the call of the receiver,
# the wrapper of a task factory or of a patched TaskGroup.create_task.


def passing_task_factory(previous: Any) -> Any:
    """A task factory that adds nothing: its tasks run the coroutine they are given."""

    def factory(loop: asyncio.AbstractEventLoop, coroutine: Any, **kwargs: Any) -> Any:
        if previous is None:
            return asyncio.Task(coroutine, loop=loop, **kwargs)
        return previous(loop, coroutine, **kwargs)

    return factory


@pytest.mark.parametrize("method", ["asend", "asend_robust with a timeout"])
def test_what_a_journaled_receiver_writes_as_it_is_called_reaches_the_caller_under_a_task_factory(
    run: Runner, method: str
) -> None:
    # A receiver marked with markcoroutinefunction (a tracing decorator's
    # sync wrapper) writes before it returns its coroutine: that write is
    # its own, as it is on a loop with no task factory.
    @markcoroutinefunction
    def sets_then_awaits(**kwargs: Any) -> Any:
        user.set("bob")

        async def rest() -> str:
            await asyncio.sleep(0)
            return "set"

        return rest()

    async def waits(**kwargs: Any) -> str:
        await asyncio.sleep(0)
        return "waited"

    signal = StructuredSignal(timeout=5.0 if "timeout" in method else None)
    signal.connect(sets_then_awaits)
    signal.connect(waits)

    async def caller() -> tuple[list[Any], str]:
        loop = asyncio.get_running_loop()
        loop.set_task_factory(passing_task_factory(loop.get_task_factory()))
        if method == "asend":
            responses = await signal.asend(sender=None)
        else:
            responses = await signal.asend_robust(sender=None)
        return [response for _, response in responses], user.get()

    assert run(caller()) == (["set", "waited"], "bob")


def test_a_task_factory_a_receiver_installs_mid_dispatch_keeps_its_wrappers_writes_apart(
    run: Runner,
) -> None:
    # The sibling's task is made by the factory the first receiver's eager
    # first step installed (Python 3.12+): the wrapper's writes in the shared
    # context are not the sibling's.
    async def installs(**kwargs: Any) -> str:
        loop = asyncio.get_running_loop()
        loop.set_task_factory(awaiting_task_factory(loop.get_task_factory()))
        await asyncio.sleep(0)
        return "installed"

    async def writes(**kwargs: Any) -> str:
        user.set("bob")
        await asyncio.sleep(0)
        return "wrote"

    signal = StructuredSignal()
    signal.connect(installs)
    signal.connect(writes)

    async def caller() -> tuple[list[Any], str, str, str]:
        responses = await signal.asend(sender=None)
        responded = [response for _, response in responses]
        return responded, user.get(), wrapper_scope.get(), wrapper_span.get()

    assert run(caller()) == (["installed", "wrote"], "bob", "", "")


def test_a_receiver_failing_as_it_is_called_in_a_robust_dispatch_keeps_a_task_factorys_writes_apart(
    run: Runner,
) -> None:
    async def wrong_signature(sender: Any) -> str:  # no **kwargs: TypeError when called
        return "never"

    async def waits(**kwargs: Any) -> str:
        await asyncio.sleep(0)
        return "waited"

    signal = StructuredSignal()
    signal.connect(wrong_signature)
    signal.connect(waits)

    async def caller() -> tuple[list[Any], str, str]:
        loop = asyncio.get_running_loop()
        loop.set_task_factory(awaiting_task_factory(loop.get_task_factory()))
        responses = await signal.asend_robust(sender=None)
        responded = [type(response) for _, response in responses]
        return responded, wrapper_scope.get(), wrapper_span.get()

    assert run(caller()) == ([TypeError, str], "", "")


@pytest.mark.parametrize("where", ["first step", "later step"])
def test_a_journaled_receivers_exception_has_a_lone_receivers_traceback(
    run: Runner, where: str
) -> None:
    # SPEC 3.8: the traceback is what it would be in a task of its own; the
    # journal's own frames (first_step, _Stepped.send/throw) are not in it.
    async def fails(**kwargs: Any) -> None:
        if where == "later step":
            await asyncio.sleep(0)
        raise ReceiverError("raised")

    async def waits(**kwargs: Any) -> None:
        await asyncio.sleep(0)

    def frames_of(*receivers: Any) -> list[str]:
        signal = StructuredSignal()
        for receiver in receivers:
            signal.connect(receiver)

        async def caller() -> Any:
            responses = await signal.asend_robust(sender=None)
            return responses[0][1]

        error = run(caller())
        assert isinstance(error, ReceiverError)
        return [frame.name for frame in traceback.extract_tb(error.__traceback__)]

    assert frames_of(fails, waits) == frames_of(fails)


def test_a_task_group_create_task_wrapper_keeps_its_writes_apart(
    run: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    # OpenTelemetry's AsyncioInstrumentor wraps asyncio.TaskGroup.create_task
    # (no task factory): each receiver's coroutine is awaited by a wrapper
    # whose own code runs in the shared context (3.14's EagerTaskGroup calls
    # it; below 3.11 the backport's TaskGroup is the one patched here).
    original = TaskGroup.create_task

    def create_task(self: Any, coroutine: Any, *args: Any, **kwargs: Any) -> Any:
        async def wrapper() -> Any:
            token = wrapper_scope.set(f"{wrapper_scope.get()}+task")
            wrapper_span.set(f"{wrapper_span.get()}+task")
            try:
                return await coroutine
            finally:
                wrapper_scope.reset(token)

        return original(self, wrapper(), *args, **kwargs)

    monkeypatch.setattr(TaskGroup, "create_task", create_task)

    def make(name: str) -> Any:
        async def receiver(**kwargs: Any) -> str:
            if name == "1":
                user.set("bob")
            await asyncio.sleep(0)
            return name

        return receiver

    signal = two_receivers(make)

    async def caller() -> tuple[list[Any], str, str, str]:
        responses = await signal.asend(sender=None)
        responded = [response for _, response in responses]
        return responded, user.get(), wrapper_scope.get(), wrapper_span.get()

    assert run(caller()) == (["1", "2"], "bob", "", "")
