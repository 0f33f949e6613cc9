"""The dispatch runner: receiver interleavings (hypothesis), threads and event loops."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import memory
import pytest
from asgiref.local import Local
from asgiref.sync import ThreadSensitiveContext, markcoroutinefunction, sync_to_async
from hypothesis import given, settings
from hypothesis import strategies as st
from support import (
    LOOP_FACTORIES,
    Flag,
    Runner,
    asend_checking_context_when_cancelled,
    assert_context_is,
    in_plain_thread,
    runner,
    snapshot,
)

from structured_signals import ContextConflictError, StructuredSignal
from structured_signals._compat import BaseExceptionGroup, TaskGroup
from structured_signals._dispatch import ContextMode, describe

VARIABLES = [contextvars.ContextVar[int](f"slot{i}") for i in range(3)]
LOCAL = Local()
LOCAL_ATTRIBUTES = ("a", "b")
# A slot is a ContextVar (by index) or an attribute of LOCAL (by name).
SLOTS: list[int | str] = [*range(len(VARIABLES)), *LOCAL_ATTRIBUTES]


def write(slot: int | str, value: int) -> None:
    if isinstance(slot, int):
        VARIABLES[slot].set(value)
    else:
        setattr(LOCAL, slot, value)


def state() -> dict[int | str, int | None]:
    values: dict[int | str, int | None] = {}
    for slot in SLOTS:
        if isinstance(slot, int):
            values[slot] = VARIABLES[slot].get(None)
        else:
            values[slot] = getattr(LOCAL, slot, None)
    return values


@dataclass(frozen=True)
class Step:
    pauses: int
    slot: int | str
    value: int


Program = list[Step]


def make_receiver(program: Program) -> Any:
    async def receiver(**kwargs: Any) -> None:
        for step in program:
            for _ in range(step.pauses):
                await asyncio.sleep(0)
            write(step.slot, step.value)

    return receiver


steps = st.builds(
    Step,
    pauses=st.integers(0, 3),
    slot=st.sampled_from(SLOTS),
    value=st.integers(1, 3),
)
programs = st.lists(st.lists(steps, max_size=4), min_size=1, max_size=4)
loops = st.sampled_from(sorted(LOOP_FACTORIES))
INITIAL: dict[int | str, int] = {0: 1, "a": 1}


def prepare_caller() -> None:
    for slot, value in INITIAL.items():
        write(slot, value)


def dispatch(signal: StructuredSignal, receivers: list[Any], loop: str) -> dict[int | str, Any]:
    for connected in receivers:
        signal.connect(connected, weak=False)

    async def caller() -> dict[int | str, Any]:
        prepare_caller()
        await signal.asend(sender=None)
        return state()

    result: dict[int | str, Any] = runner(LOOP_FACTORIES[loop])(caller())
    return result


def one_by_one(receivers: list[Any], loop: str) -> dict[int | str, Any]:
    async def caller() -> dict[int | str, Any]:
        prepare_caller()
        for connected in receivers:
            await connected()
        return state()

    result: dict[int | str, Any] = runner(LOOP_FACTORIES[loop])(caller())
    return result


def owned_by_one_receiver(programs: list[Program]) -> bool:
    owners: dict[int | str, int] = {}
    for index, program in enumerate(programs):
        for step in program:
            if owners.setdefault(step.slot, index) != index:
                return False
    return True


@settings(deadline=None, max_examples=150)
@given(
    programs=programs.filter(owned_by_one_receiver),
    loop=loops,
    mode=st.sampled_from(["isolated", "shared"]),
)
def test_disjoint_writes_merge_as_if_receivers_ran_one_by_one_in_connection_order(
    programs: list[Program], loop: str, mode: str
) -> None:
    receivers = [make_receiver(program) for program in programs]
    signal = StructuredSignal(context=mode)  # type: ignore[arg-type]
    assert dispatch(signal, receivers, loop) == one_by_one(receivers, loop)


def final_writes(program: Program) -> dict[int | str, int]:
    """What a receiver leaves in each slot it wrote (its last write wins)."""
    return {step.slot: step.value for step in program}


def expected_outcome(programs: list[Program], policy: str) -> dict[int | str, Any] | None:
    """The caller's state after an isolated dispatch, None for a conflict error.

    A receiver changed a slot when its last write there is not the base value
    (small ints: identity is equality); writers disagree when their values differ.
    """
    base = {slot: INITIAL.get(slot) for slot in SLOTS}
    result = dict(base)
    for slot in SLOTS:
        writers = [
            final_writes(program)[slot]
            for program in programs
            if slot in final_writes(program) and final_writes(program)[slot] != base[slot]
        ]
        if not writers:
            continue
        if len(set(writers)) > 1 and policy == "raise":
            return None
        result[slot] = writers[-1] if policy == "last" else writers[0]
    return result


@settings(deadline=None, max_examples=200)
@given(programs=programs, loop=loops, policy=st.sampled_from(["raise", "first", "last"]))
def test_isolated_overlapping_writes_conflict_exactly_when_writers_disagree(
    programs: list[Program], loop: str, policy: str
) -> None:
    receivers = [make_receiver(program) for program in programs]
    signal = StructuredSignal(context="isolated", on_conflict=policy)  # type: ignore[arg-type]
    expected = expected_outcome(programs, policy)
    if expected is None:
        with pytest.raises(ContextConflictError):
            dispatch(signal, receivers, loop)
    else:
        assert dispatch(signal, receivers, loop) == expected


def test_sync_receivers_run_in_the_thread_django_picked_for_the_request(run: Runner) -> None:
    signal = StructuredSignal()
    threads: list[int] = []

    def sync_receiver(**kwargs: Any) -> None:
        threads.append(threading.get_ident())

    signal.connect(sync_receiver)

    async def request() -> int:
        # Django's ASGIHandler wraps each request in a ThreadSensitiveContext,
        # so that all its sync code (database connections) runs in one thread.
        async with ThreadSensitiveContext():
            request_thread: int = await sync_to_async(threading.get_ident)()
            await signal.asend(sender=None)
            return request_thread

    request_thread = run(request())
    assert threads == [request_thread]


def test_send_called_from_a_sync_to_async_thread_runs_async_receivers_on_the_callers_loop(
    run: Runner,
) -> None:
    signal = StructuredSignal()
    loops: list[asyncio.AbstractEventLoop] = []
    user: contextvars.ContextVar[str] = contextvars.ContextVar("user")

    async def async_receiver(**kwargs: Any) -> None:
        loops.append(asyncio.get_running_loop())
        user.set("alice")

    signal.connect(async_receiver)

    def sync_view() -> str:
        signal.send(sender=None)
        return user.get()

    async def caller() -> tuple[asyncio.AbstractEventLoop, str]:
        return asyncio.get_running_loop(), await sync_to_async(sync_view)()

    loop, seen = run(caller())
    assert loops == [loop]
    assert seen == "alice"


def test_describe_names_functions_and_callable_instances_by_module_and_qualname() -> None:
    class Handler:
        def __call__(self, **kwargs: Any) -> None:
            pass

    def function(**kwargs: Any) -> None:
        pass

    assert describe(function) == f"{__name__}.{function.__qualname__}"
    assert describe(Handler()).endswith("Handler")


class ReceiverError(Exception):
    pass


# What each fault does to a dispatch (README, "Reliability"): robust variants
# answer an Exception, and a receiver's own CancelledError, as its response;
# everything else propagates, and the caller's context stays as it was.
FAULTS: dict[str, type[BaseException]] = {
    "exception": ReceiverError,
    "own CancelledError": asyncio.CancelledError,
    "GeneratorExit": GeneratorExit,
    "KeyboardInterrupt": KeyboardInterrupt,
    "SystemExit": SystemExit,
}
ANSWERED_BY_ROBUST = {"exception", "own CancelledError"}
written: contextvars.ContextVar[str] = contextvars.ContextVar("written")
healthy_wrote: contextvars.ContextVar[str] = contextvars.ContextVar("healthy_wrote")


def faulty_receiver(kind: str, fault: type[BaseException]) -> Any:
    def sync_faulty(**kwargs: Any) -> None:
        written.set("by the faulty receiver")
        raise fault

    async def async_faulty(**kwargs: Any) -> None:
        written.set("by the faulty receiver")
        await asyncio.sleep(0)
        raise fault

    return sync_faulty if kind == "sync" else async_faulty


@pytest.mark.parametrize("fault", sorted(FAULTS))
@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("mode", ["shared", "isolated"])
@pytest.mark.parametrize("method", ["send", "send_robust", "asend", "asend_robust"])
def test_each_fault_has_its_documented_outcome_and_a_raising_dispatch_merges_nothing(
    run: Runner, method: str, mode: str, kind: str, fault: str
) -> None:
    signal = StructuredSignal(context=mode)  # type: ignore[arg-type]
    faulty = faulty_receiver(kind, FAULTS[fault])

    async def healthy(**kwargs: Any) -> str:
        await asyncio.sleep(0.01)
        healthy_wrote.set("yes")
        return "ok"

    signal.connect(faulty)
    signal.connect(healthy)
    answered = method.endswith("robust") and fault in ANSWERED_BY_ROBUST

    # send() and send_robust() call a sync receiver in the caller's own
    # context, as Django does: its writes are the caller's as it runs.
    in_callers_context = kind == "sync" and not method.startswith("a")

    def check(responses: list[tuple[Any, Any]]) -> None:
        assert [receiver for receiver, _ in responses] == [faulty, healthy]
        assert isinstance(responses[0][1], FAULTS[fault])
        assert responses[1][1] == "ok"
        assert healthy_wrote.get() == "yes"
        kept = mode == "shared" or in_callers_context
        assert written.get(None) == ("by the faulty receiver" if kept else None)

    async def async_caller() -> None:
        before = snapshot()
        try:
            responses = await getattr(signal, method)(sender=None)
        except BaseException:
            assert_context_is(before)
            raise
        check(responses)

    def sync_caller() -> None:
        before = snapshot()
        try:
            responses = getattr(signal, method)(sender=None)
        except BaseException:
            if in_callers_context:
                assert written.get() == "by the faulty receiver"
                before[written] = written.get()
            assert_context_is(before)
            raise
        check(responses)

    def call() -> None:
        if method.startswith("a"):
            run(async_caller())
        else:
            in_plain_thread(sync_caller)

    if answered:
        call()
    else:
        with pytest.raises(FAULTS[fault]):
            call()


def test_a_sync_receiver_still_running_when_the_caller_is_cancelled_merges_nothing(
    run: Runner,
) -> None:
    signal = StructuredSignal()
    started = threading.Event()

    def slow(**kwargs: Any) -> None:
        written.set("by the slow receiver")
        started.set()
        time.sleep(0.1)

    signal.connect(slow)

    async def main() -> None:
        task = asyncio.ensure_future(asend_checking_context_when_cancelled(signal))
        while not started.is_set():
            await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(main())


@pytest.mark.parametrize("mode", ["shared", "isolated"])
def test_dispatches_keep_no_context_task_or_receiver_frame_alive_nor_grow_memory(mode: str) -> None:
    report = memory.measure(3_000, mode)
    assert report.contexts_left == 0
    assert report.tasks_left == 0
    assert report.receiver_frames_left == 0
    assert report.grown_bytes < memory.LIMIT


@pytest.mark.parametrize("method", ["send", "send_robust", "asend", "asend_robust"])
def test_a_lone_receivers_own_cancelled_error_is_answered_when_robust_and_raised_otherwise(
    run: Runner, method: str
) -> None:
    signal = StructuredSignal()

    async def gives_up(**kwargs: Any) -> None:
        written.set("by the lone receiver")
        raise asyncio.CancelledError

    signal.connect(gives_up)

    async def async_caller() -> list[tuple[Any, Any]]:
        result: list[tuple[Any, Any]] = await getattr(signal, method)(sender=None)
        return result

    def call() -> list[tuple[Any, Any]]:
        if method.startswith("a"):
            result: list[tuple[Any, Any]] = run(async_caller())
            return result
        return in_plain_thread(lambda: getattr(signal, method)(sender=None))

    if method.endswith("robust"):
        ((receiver, response),) = call()
        assert receiver is gives_up
        assert isinstance(response, asyncio.CancelledError)
    else:
        with pytest.raises(asyncio.CancelledError):
            call()


@pytest.mark.parametrize("receivers", [1, 2])
@pytest.mark.parametrize("method", ["send", "send_robust", "asend", "asend_robust"])
def test_a_receiver_whose_own_task_was_cancelled_fails_as_awaiting_that_task_would(
    run: Runner, method: str, receivers: int
) -> None:
    # Cancelled by itself (or by anyone holding its task), not by the
    # dispatch: awaiting a task of its own would raise CancelledError.
    signal = StructuredSignal()

    async def cancels_its_task(**kwargs: Any) -> str:
        task = asyncio.current_task()
        assert task is not None
        task.cancel("by the receiver")
        await asyncio.sleep(0)
        return "never"

    async def sibling(**kwargs: Any) -> str:
        await asyncio.sleep(0)
        return "sibling"

    signal.connect(cancels_its_task)
    if receivers == 2:
        signal.connect(sibling)

    async def async_caller() -> tuple[list[tuple[Any, Any]], int | None]:
        result: list[tuple[Any, Any]] = await getattr(signal, method)(sender=None)
        return result, cancel_requests(asyncio.current_task())

    def call() -> list[tuple[Any, Any]]:
        if method.startswith("a"):
            result: list[tuple[Any, Any]]
            result, cancelling = run(async_caller())
            assert cancelling == (0 if sys.version_info >= (3, 11) else None)
            return result
        return in_plain_thread(lambda: getattr(signal, method)(sender=None))

    if method.endswith("robust"):
        responses = call()
        assert responses[0][0] is cancels_its_task
        assert isinstance(responses[0][1], asyncio.CancelledError)
        assert [response for _, response in responses[1:]] == ["sibling"] * (receivers - 1)
    else:
        with pytest.raises(asyncio.CancelledError):
            call()


def sync_noop(**kwargs: Any) -> None:
    pass


@pytest.mark.parametrize(
    ("receivers", "timeout"),
    [
        ("one async", None),
        ("sync, then one async", None),
        ("one async", 5.0),
        ("two async", None),
    ],
)
def test_every_async_receiver_runs_in_a_task_of_its_own_even_alone(
    run: Runner, receivers: str, timeout: float | None
) -> None:
    signal = StructuredSignal(timeout=timeout)
    tasks: list[asyncio.Task[Any] | None] = []

    async def records_its_task(**kwargs: Any) -> None:
        tasks.append(asyncio.current_task())
        await asyncio.sleep(0)

    async def records_too(**kwargs: Any) -> None:
        await records_its_task()

    if receivers.startswith("sync"):
        signal.connect(sync_noop)
    signal.connect(records_its_task)
    if receivers == "two async":
        signal.connect(records_too)

    async def caller() -> asyncio.Task[Any] | None:
        await signal.asend(sender=None)
        return asyncio.current_task()

    caller_task = run(caller())
    assert len(tasks) == (2 if receivers == "two async" else 1)
    assert all(task is not None and task is not caller_task for task in tasks)
    assert len(set(tasks)) == len(tasks)


@pytest.mark.parametrize("mode", ["shared", "isolated"])
@pytest.mark.parametrize("timeout", [None, 5.0])
def test_a_suspended_receivers_task_shows_the_callers_task_as_its_awaiter_from_python_3_14(
    run: Runner, timeout: float | None, mode: ContextMode
) -> None:
    # Shared mode runs each receiver's coroutine through the write journal:
    # the call graph still shows the receiver's own frames.
    signal = StructuredSignal(timeout=timeout, context=mode)
    resume = Flag()
    waiting: list[asyncio.Task[Any] | None] = []
    graphs: dict[str, Any] = {}

    async def waits(**kwargs: Any) -> None:
        waiting.append(asyncio.current_task())
        await resume.wait()

    async def looks(**kwargs: Any) -> None:
        await asyncio.sleep(0)  # past the eager first step
        if sys.version_info >= (3, 14):
            # `waits` is suspended in its task: as `python -m asyncio pstree` sees it.
            graphs["waits"] = asyncio.capture_call_graph(waiting[0])
            graphs["looks"] = asyncio.capture_call_graph()
        resume.set()

    signal.connect(waits)
    signal.connect(looks)

    async def caller() -> asyncio.Task[Any] | None:
        await signal.asend(sender=None)
        return asyncio.current_task()

    caller_task = run(caller())
    assert waiting[0] is not caller_task
    if sys.version_info >= (3, 14):
        for name, graph in graphs.items():
            assert graph.future is not caller_task, name
            assert [awaiter.future for awaiter in graph.awaited_by] == [caller_task], name
        frames = [entry.frame.f_code for entry in graphs["waits"].call_stack]
        assert waits.__code__ in frames
    else:
        # Nothing records which task awaits another before 3.14.
        assert not hasattr(asyncio, "capture_call_graph")
        assert not graphs


@pytest.mark.parametrize("count", [1, 2])
@pytest.mark.parametrize("method", ["send", "asend"])
def test_a_marked_callable_returning_a_future_is_called_and_awaited_in_its_own_context(
    run: Runner, method: str, count: int
) -> None:
    signal = StructuredSignal(context="isolated")
    variables = [contextvars.ContextVar[str](f"marked{index}") for index in range(count)]

    def make(variable: contextvars.ContextVar[str]) -> Any:
        def returns_a_future(**kwargs: Any) -> asyncio.Future[str]:
            # Written when called, before anything is awaited.
            variable.set(f"set by {variable.name}")
            future = asyncio.get_running_loop().create_future()
            future.get_loop().call_soon(future.set_result, variable.name)
            return future

        return markcoroutinefunction(returns_a_future)

    receivers = [make(variable) for variable in variables]
    for receiver in receivers:
        signal.connect(receiver)

    async def async_caller() -> tuple[list[tuple[Any, Any]], list[str | None]]:
        responses = await signal.asend(sender=None)
        return responses, [variable.get(None) for variable in variables]

    def sync_caller() -> tuple[list[tuple[Any, Any]], list[str | None]]:
        responses = signal.send(sender=None)
        return responses, [variable.get(None) for variable in variables]

    responses, seen = run(async_caller()) if method == "asend" else in_plain_thread(sync_caller)
    assert responses == [
        (receiver, variable.name) for receiver, variable in zip(receivers, variables)
    ]
    assert seen == [f"set by {variable.name}" for variable in variables]


@pytest.mark.parametrize("count", [1, 2])
@pytest.mark.parametrize("method", ["asend", "asend_robust"])
def test_receivers_that_swallow_the_callers_cancellation_leave_it_cancelled_merging_nothing(
    run: Runner, method: str, count: int
) -> None:
    signal = StructuredSignal()
    started: list[asyncio.Event] = []

    async def swallows(**kwargs: Any) -> str:
        written.set("by a receiver that swallowed the cancellation")
        started[0].set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            return "carried on"
        return "slept"

    async def sibling(**kwargs: Any) -> None:
        await asyncio.sleep(10)

    signal.connect(swallows)
    if count == 2:
        signal.connect(sibling)

    async def caller() -> list[str | None]:
        started.append(asyncio.Event())
        seen: list[str | None] = []

        async def dispatching() -> None:
            try:
                await getattr(signal, method)(sender=None)
            finally:
                seen.append(written.get(None))

        dispatch = asyncio.ensure_future(dispatching())
        await started[0].wait()
        dispatch.cancel()
        with pytest.raises(asyncio.CancelledError):
            await dispatch
        return seen

    assert run(caller()) == [None]


def test_a_lone_receivers_own_cancelled_error_is_its_response_after_the_caller_kept_a_cancel(
    run: Runner,
) -> None:
    signal = StructuredSignal()

    async def gives_up(**kwargs: Any) -> None:
        raise asyncio.CancelledError

    signal.connect(gives_up)

    async def caller() -> list[tuple[Any, Any]]:
        # A cancellation caught and not undone: the task still counts it.
        current = asyncio.current_task()
        assert current is not None
        current.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(0)
        return await signal.asend_robust(sender=None)

    ((receiver, response),) = run(caller())
    assert receiver is gives_up
    assert isinstance(response, asyncio.CancelledError)


def orm_like_receiver(threads: list[int]) -> Any:
    """An async receiver that does what every ORM call does: await sync_to_async."""

    async def orm_like(**kwargs: Any) -> None:
        threads.append(await sync_to_async(threading.get_ident)())

    return orm_like


@pytest.mark.parametrize(
    "caller", ["sync view", "sync view in a ThreadSensitiveContext", "sync receiver of asend"]
)
def test_an_async_receiver_of_send_from_sync_to_async_code_runs_its_sync_to_async_in_that_thread(
    run: Runner, caller: str
) -> None:
    signal = StructuredSignal()
    outer = StructuredSignal()
    threads: list[int] = []
    callers: list[int] = []
    signal.connect(orm_like_receiver(threads), weak=False)

    def sync_code(**kwargs: Any) -> None:
        callers.append(threading.get_ident())
        signal.send(sender=None)

    outer.connect(sync_code, weak=False)

    async def dispatch() -> None:
        if caller == "sync receiver of asend":
            await outer.asend(sender=None)
        else:
            await sync_to_async(sync_code)()

    async def main() -> None:
        # Unfixed, this hangs (ThreadSensitiveContext) or raises RuntimeError:
        # the guard turns a hang into a failure.
        if caller == "sync view":
            await asyncio.wait_for(dispatch(), 30)
            return
        async with ThreadSensitiveContext():
            await asyncio.wait_for(dispatch(), 30)

    run(main())
    # As under stock Django: the receiver's sync code runs in the waiting thread.
    assert threads == callers


def test_sync_receivers_that_had_not_started_when_asend_was_cancelled_never_start(
    run: Runner,
) -> None:
    signal = StructuredSignal()
    started, release = threading.Event(), threading.Event()
    called: list[str] = []

    def blocks(**kwargs: Any) -> None:
        called.append("blocks")
        started.set()
        release.wait(30)

    def later(**kwargs: Any) -> None:
        called.append("later")

    signal.connect(blocks)
    signal.connect(later)

    async def main() -> None:
        task = asyncio.ensure_future(signal.asend(sender=None))
        while not started.is_set():
            await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        release.set()
        # Queued behind the dispatch's sync receivers in their one thread:
        # runs once that call has returned.
        await sync_to_async(lambda: None, thread_sensitive=True)()

    run(main())
    assert called == ["blocks"]


async def fails_later(**kwargs: Any) -> None:
    await asyncio.sleep(0)
    raise ReceiverError


async def sleeps(**kwargs: Any) -> None:
    await asyncio.sleep(10)


def cancel_requests(task: asyncio.Task[Any] | None) -> int | None:
    """The task's pending cancel requests where it counts them (3.11+), else None."""
    cancelling = getattr(task, "cancelling", None)
    return None if cancelling is None else int(cancelling())


@pytest.mark.parametrize("count", [1, 2])
def test_a_failed_dispatch_leaves_the_callers_task_cancelling_as_it_found_it(
    run: Runner, count: int
) -> None:
    signal = StructuredSignal()
    signal.connect(fails_later)
    if count == 2:
        signal.connect(sleeps)

    async def caller() -> list[int | None]:
        seen = []
        for _ in range(3):
            with pytest.raises(ReceiverError):
                await signal.asend(sender=None)
            seen.append(cancel_requests(asyncio.current_task()))
            await asyncio.sleep(0)  # no stray CancelledError either
        return seen

    expected = 0 if sys.version_info >= (3, 11) else None
    assert run(caller()) == [expected] * 3


async def handles_its_own_task_groups_failure(**kwargs: Any) -> str:
    try:
        async with TaskGroup() as group:
            group.create_task(fails_later())
            group.create_task(sleeps())
    except BaseExceptionGroup:
        return "handled"
    return "not reached"


async def watchdog(**kwargs: Any) -> str:
    task = asyncio.current_task()
    assert task is not None
    task.cancel()
    try:
        await asyncio.sleep(10)
    except asyncio.CancelledError:
        return "recovered"
    return "not reached"


@pytest.mark.parametrize("method", ["asend", "asend_robust"])
@pytest.mark.parametrize("receiver", [handles_its_own_task_groups_failure, watchdog])
def test_a_lone_receiver_that_handles_a_cancellation_of_its_own_task_leaves_the_caller_alone(
    run: Runner, method: str, receiver: Any
) -> None:
    signal = StructuredSignal()
    signal.connect(receiver)

    async def caller() -> tuple[list[tuple[Any, Any]], int | None]:
        responses: list[tuple[Any, Any]] = await getattr(signal, method)(sender=None)
        await asyncio.sleep(0)  # no stray CancelledError
        return responses, cancel_requests(asyncio.current_task())

    responses, cancelling = run(caller())
    expected = "recovered" if receiver is watchdog else "handled"
    assert responses == [(receiver, expected)]
    assert cancelling == (0 if sys.version_info >= (3, 11) else None)


@pytest.mark.parametrize("method", ["asend", "asend_robust"])
def test_a_lone_receivers_keyboard_interrupt_leaves_the_loop_past_a_caller_that_catches_it(
    run: Runner, method: str
) -> None:
    signal = StructuredSignal()

    async def interrupted(**kwargs: Any) -> None:
        raise KeyboardInterrupt

    signal.connect(interrupted)

    async def caller() -> str:
        try:
            await getattr(signal, method)(sender=None)
        except KeyboardInterrupt:
            return "swallowed by the caller"
        return "returned"

    with pytest.raises(KeyboardInterrupt):
        run(caller())
