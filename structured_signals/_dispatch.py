"""The dispatch runner: one dispatch of a signal to its live receivers.

Sync receivers run first, one after another, each in a copy of the previous
one's context; async receivers then run together in a TaskGroup, in one
shared copy of that context or in one copy each. Nothing is written into the
caller's context until every receiver has finished; then the receivers'
changes are merged in (`_context.merge`). A dispatch that raises merges
nothing (#36714 is the bug of the other direction: losing everything).

A sync send() is no such dispatch for its sync receivers: StructuredSignal.send
calls them itself, in the caller's context, as Django does; only its async
receivers come here (`Dispatch.run_from_sync`).
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import threading
import types
from collections.abc import Awaitable, Callable, Coroutine, Generator
from functools import partial
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from asgiref.sync import async_to_sync, sync_to_async

from structured_signals._compat import (
    BaseExceptionGroup,
    EagerTaskGroup,
    asgiref_carrier,
    counts_cancellations,
    is_connected,
    rehomed,
    shares_values,
    timeout_at,
)
from structured_signals._context import Writer, merge_into_current

if TYPE_CHECKING:
    from structured_signals._signal import StructuredSignal

__all__ = ("Dispatch", "Responses", "describe", "runs_alone", "send_to_one")

Receiver = Callable[..., Any]
Responses = list[tuple[Receiver, Any]]
ContextMode = Literal["shared", "isolated"]
_T = TypeVar("_T")

logger = logging.getLogger("django.dispatch")


def describe(receiver: Receiver) -> str:
    """The receiver's module and qualified name, as conflicts show it."""
    module = getattr(receiver, "__module__", None)
    return f"{module}.{_qualname(receiver)}" if module else _qualname(receiver)


def _qualname(receiver: Receiver) -> str:
    # A callable instance has no __qualname__ of its own.
    return getattr(receiver, "__qualname__", None) or type(receiver).__qualname__


class Dispatch:
    """The state of one dispatch, from the caller's snapshot to the merge.

    The signal's options (context, on_conflict, timeout) are read as it begins.
    """

    __slots__ = (
        "async_base",
        "async_writers",
        "base",
        "disconnections",
        "isolated",
        "named",
        "on_conflict",
        "responses",
        "robust",
        "sender",
        "signal",
        "sync_ran_elsewhere",
        "sync_writers",
        "thread",
        "timeout",
    )

    def __init__(
        self, signal: StructuredSignal, sender: Any, named: dict[str, Any], *, robust: bool
    ) -> None:
        self.signal = signal
        self.sender = sender
        self.named = named
        self.robust = robust
        self.isolated = signal.context == "isolated"
        self.on_conflict = signal.on_conflict
        self.timeout = signal.timeout
        self.disconnections = signal._disconnections
        # Local storages are tagged with the thread that wrote them (asgiref
        # 3.12+): re-home them only when receivers run on another thread.
        self.thread = threading.get_ident()
        self.sync_ran_elsewhere = False
        # Invariant: `base` is never entered, so it stays the caller's context
        # as it was when the dispatch began; every receiver context is a copy.
        self.base = contextvars.copy_context()
        self.sync_writers: list[Writer] = []
        self.async_base = self.base
        self.async_writers: list[Writer] = []
        self.responses: Responses = []

    async def run_from_async(
        self, sync_receivers: list[Receiver], async_receivers: list[Receiver]
    ) -> Responses:
        """The whole dispatch, from async code: sync receivers in a thread, then async ones."""
        if sync_receivers:
            await self.run_sync_in_thread(sync_receivers)
        if async_receivers:
            await self.run_async(async_receivers)
        self.merge_into_caller()
        return self.responses

    def run_from_sync(self, async_receivers: list[Receiver], *, disconnections: int) -> Responses:
        """The async receivers of a sync send(), through async_to_sync; changes merged.

        send() has already called the sync receivers in the caller's own
        context, as Django does, so they are no part of this dispatch.
        `disconnections` is the signal's count from when send() began: a sync
        receiver may have disconnected one of these since.
        """
        self.disconnections = disconnections
        self.run_async_from_sync(async_receivers)
        self.merge_into_caller()
        return self.responses

    def run_sync(self, receivers: list[Receiver]) -> None:
        """Run sync receivers here, in order, each seeing the previous one's writes."""
        context = self._at_home(self.base)
        for receiver in receivers:
            if not self._still_connected(receiver):
                continue
            attempt = context.copy()
            try:
                response = attempt.run(
                    receiver, signal=self.signal, sender=self.sender, **self.named
                )
                if response is not None and inspect.isawaitable(response):
                    raise _awaitable_from_sync_receiver(receiver, response)
            except (Exception, asyncio.CancelledError) as err:
                # A sync receiver's CancelledError is its own: nothing cancels a thread.
                if not self.robust:
                    raise
                _log_failure(receiver, err)
                self.responses.append((receiver, err))
                # A failed receiver's writes are dropped in isolated mode; in
                # shared mode they stay, as in Django 6.1.
                if self.isolated:
                    continue
            else:
                self.responses.append((receiver, response))
            # A receiver that wrote nothing is not a writer: recognised in O(1).
            if not shares_values(context, attempt):
                self.sync_writers.append(Writer(partial(describe, receiver), attempt))
            context = attempt

    async def run_sync_in_thread(self, receivers: list[Receiver]) -> None:
        """Run sync receivers in one sync_to_async(thread_sensitive=True) call."""
        hop = sync_to_async(self.run_sync, thread_sensitive=True)
        await _in_context(asgiref_carrier(), hop(receivers))
        self.sync_ran_elsewhere = True

    async def run_async(self, receivers: list[Receiver]) -> None:
        """Run async receivers concurrently in a TaskGroup, on the current loop.

        A lone one, where it can be, is awaited right here (`_await_alone`).
        """
        sync_end = self._sync_end
        start = rehomed(sync_end) if self.sync_ran_elsewhere else self._at_home(sync_end)
        self.async_base = start
        if len(receivers) == 1 and _can_run_alone(self.signal):
            await self._run_alone(receivers[0], start)
            return
        if self.isolated:
            contexts = [start.copy() for _ in receivers]
        else:
            shared = start.copy()
            contexts = [shared] * len(receivers)
        outcomes: list[Any] = [None] * len(receivers)
        failed = [False] * len(receivers)
        skipped = [False] * len(receivers)
        # Invariant: while `populating`, no receiver's task ends in an error.
        # An eager task (3.12+) failing inside create_task makes the TaskGroup
        # cancel the caller before `__aexit__` can absorb it (3.12 keeps the
        # pending cancel after uncancel()) and refuse the remaining
        # create_task calls; deferring the error by one loop step makes eager
        # dispatch fail exactly as lazy dispatch does.
        populating = True

        # Sync receivers cannot be interrupted: the timeout bounds the async
        # ones, each on its own when robust (its TimeoutError is its response),
        # all together otherwise (one TimeoutError for the dispatch).
        deadline = None
        if self.timeout is not None:
            deadline = asyncio.get_running_loop().time() + self.timeout
        each_deadline, group_deadline = (deadline, None) if self.robust else (None, deadline)
        signal, sender, named = self.signal, self.sender, self.named
        disconnections = self.disconnections

        async def call(index: int, receiver: Receiver) -> None:
            # As _still_connected(), inline: this runs once per receiver.
            if signal._disconnections != disconnections and not is_connected(signal, receiver):
                skipped[index] = True
                return
            try:
                if each_deadline is None:
                    outcomes[index] = await receiver(signal=signal, sender=sender, **named)
                else:
                    async with timeout_at(each_deadline):
                        outcomes[index] = await receiver(signal=signal, sender=sender, **named)
            except BaseException as err:
                if _answers(self.robust, receiver, err):
                    outcomes[index] = err
                    failed[index] = True
                    return
                if populating:
                    await asyncio.sleep(0)
                # The TaskGroup would take a receiver's own CancelledError for
                # the receiver being cancelled, and go on without a word.
                if _own_cancellation(err):
                    raise _ReceiverCancelled(err) from None
                raise

        async def run_all() -> None:
            nonlocal populating
            async with EagerTaskGroup() as group:
                create_task = group.create_task
                for index, receiver in enumerate(receivers):
                    create_task(call(index, receiver), context=contexts[index])
                populating = False

        try:
            if group_deadline is None:
                await run_all()
            else:
                async with timeout_at(group_deadline):
                    await run_all()
        except _ReceiverCancelled as error:
            raise error.cancelled from None
        except BaseExceptionGroup as group_error:
            errors = [_unwrapped(error) for error in group_error.exceptions]
            if len(errors) == 1:
                raise errors[0] from None
            raise BaseExceptionGroup("errors raised by receivers", errors) from None
        if any(skipped):
            kept = [index for index, skip in enumerate(skipped) if not skip]
            receivers = [receivers[index] for index in kept]
            outcomes = [outcomes[index] for index in kept]
            contexts = [contexts[index] for index in kept]
            failed = [failed[index] for index in kept]
        self.responses.extend(zip(receivers, outcomes))
        if not self.isolated:
            self._keep_writer(partial(_shared_name, *receivers), shared)
            return
        for receiver, context, lost in zip(receivers, contexts, failed):
            if not lost:
                self._keep_writer(partial(describe, receiver), context)

    async def _run_alone(self, receiver: Receiver, start: contextvars.Context) -> None:
        """Run the one async receiver inline, in a copy of `start`."""
        if not self._still_connected(receiver):
            return
        context = start.copy()
        response, failed = await _await_alone(
            self.signal, receiver, self.sender, self.named, context, robust=self.robust
        )
        self.responses.append((receiver, response))
        if not (failed and self.isolated):
            self._keep_writer(_lone_name(receiver, isolated=self.isolated), context)

    def run_async_from_sync(self, receivers: list[Receiver]) -> None:
        """Run async receivers from sync code, through async_to_sync."""
        asgiref_carrier().run(async_to_sync(self.run_async), receivers)

    def merge_into_caller(self) -> None:
        """Write the receivers' changes into the caller's current context."""
        if not self.sync_writers and not self.async_writers:
            return  # nobody wrote anything: the common case
        merge_into_current(
            base=self.base,
            sync_writers=self.sync_writers,
            async_base=self.async_base,
            async_writers=self.async_writers,
            on_conflict=self.on_conflict,
        )

    @property
    def _sync_end(self) -> contextvars.Context:
        """Where the sync receivers left off: the last kept one's context, or the base."""
        return self.sync_writers[-1].context if self.sync_writers else self.base

    def _at_home(self, context: contextvars.Context) -> contextvars.Context:
        """`context`, re-homed if this is not the caller's thread."""
        return context if threading.get_ident() == self.thread else rehomed(context)

    def _keep_writer(self, describe: Callable[[], str], context: contextvars.Context) -> None:
        """Count `context` among the async writers, unless nobody wrote in it."""
        # An unwritten copy has nothing to merge: recognised in O(1).
        if not shares_values(self.async_base, context):
            self.async_writers.append(Writer(describe, context))

    def _still_connected(self, receiver: Receiver) -> bool:
        """False once `receiver`'s disconnect() has returned, even mid-dispatch."""
        return self.signal._disconnections == self.disconnections or is_connected(
            self.signal, receiver
        )


def runs_alone(
    signal: StructuredSignal, sync_receivers: list[Receiver], async_receivers: list[Receiver]
) -> bool:
    """Whether the dispatch is one async receiver and nothing else: see `send_to_one`."""
    return not sync_receivers and len(async_receivers) == 1 and _can_run_alone(signal)


async def send_to_one(
    signal: StructuredSignal,
    receiver: Receiver,
    sender: Any,
    named: dict[str, Any],
    *,
    robust: bool,
) -> Responses:
    """Dispatch to a lone async receiver, without a Dispatch's bookkeeping."""
    isolated = signal.context == "isolated"
    base = contextvars.copy_context()
    context = base.copy()
    response, failed = await _await_alone(signal, receiver, sender, named, context, robust=robust)
    if not (failed and isolated) and not shares_values(base, context):
        merge_into_current(
            base=base,
            sync_writers=(),
            async_base=base,
            async_writers=(Writer(_lone_name(receiver, isolated=isolated), context),),
            on_conflict=signal.on_conflict,
        )
    return [(receiver, response)]


def _lone_name(receiver: Receiver, *, isolated: bool) -> Callable[[], str]:
    """How conflicts name a lone async receiver's writes."""
    return partial(describe if isolated else _shared_name, receiver)


def _can_run_alone(signal: StructuredSignal) -> bool:
    # A deadline needs a task to cancel; telling the receiver's own
    # CancelledError from the caller being cancelled needs a task that counts
    # its cancellations (Python 3.11+).
    return signal.timeout is None and counts_cancellations()


async def _await_alone(
    signal: StructuredSignal,
    receiver: Receiver,
    sender: Any,
    named: dict[str, Any],
    context: contextvars.Context,
    *,
    robust: bool,
) -> tuple[Any, bool]:
    """Await a lone async receiver in this task, in `context`: (response, failed).

    It has no sibling to run beside: this is what a TaskGroup of one does,
    minus the task and the trips through the event loop.
    """
    task = asyncio.current_task()
    # Cancellations this task had been asked for before are not the receiver's.
    cancelling = task.cancelling() if task is not None else 0
    try:
        # Called in its context too: a marked sync callable runs code when called.
        coroutine = _coroutine_of(context.run(receiver, signal=signal, sender=sender, **named))
        finished, value = _first_step(context, coroutine)
        # One that finishes at once costs no generator to step it.
        if not finished:
            value = await _steps_after(context, coroutine, value)
        outcome = (value, False)
    except BaseException as err:
        if not _answers(robust, receiver, err, cancelling=cancelling):
            raise
        outcome = (err, True)
    if task is not None and task.cancelling() > cancelling:
        # The caller was cancelled and the receiver swallowed it: a group of
        # one would still raise it, merging nothing.
        raise asyncio.CancelledError
    return outcome


def _answers(robust: bool, receiver: Receiver, err: BaseException, *, cancelling: int = 0) -> bool:
    """Whether `err` becomes `receiver`'s response (robust dispatch), logged.

    `cancelling`: how many cancellations the running task had been asked for
    before the receiver started (none for a task of its own).
    """
    if robust and (isinstance(err, Exception) or _own_cancellation(err, cancelling)):
        _log_failure(receiver, err)
        return True
    return False


def _log_failure(receiver: Receiver, err: BaseException) -> None:
    logger.error(
        "Error calling %s in Signal.send_robust() (%s)",
        _qualname(receiver),
        err,
        exc_info=err,
    )


def _shared_name(*receivers: Receiver) -> str:
    return f"{', '.join(map(describe, receivers))} (shared context)"


class _ReceiverCancelled(Exception):
    """Carries a receiver's own CancelledError through the TaskGroup."""

    def __init__(self, cancelled: BaseException) -> None:
        super().__init__(cancelled)
        self.cancelled = cancelled


def _unwrapped(error: BaseException) -> BaseException:
    return error.cancelled if isinstance(error, _ReceiverCancelled) else error


def _own_cancellation(err: BaseException, cancelling: int = 0) -> bool:
    """Whether `err` is a CancelledError the receiver raised itself.

    Not one thrown into it because its task is being cancelled (by the group,
    the caller, a timeout): that asks for one more cancellation than the
    task had been asked for (`cancelling`) when the receiver started.
    """
    if not isinstance(err, asyncio.CancelledError):
        return False
    task = asyncio.current_task()
    return task is None or task.cancelling() <= cancelling


def _awaitable_from_sync_receiver(receiver: Receiver, response: Any) -> TypeError:
    if inspect.iscoroutine(response):
        response.close()  # it will never run: no "was never awaited" warning
    return TypeError(
        f"{describe(receiver)} was connected as a sync receiver but returned "
        f"{type(response).__name__}, an awaitable the signal would never await. "
        "Define it with 'async def', or mark it with asgiref.sync.markcoroutinefunction()."
    )


async def _awaited(awaitable: Awaitable[_T]) -> _T:
    return await awaitable


def _coroutine_of(awaitable: Awaitable[_T]) -> Coroutine[Any, Any, _T]:
    return awaitable if isinstance(awaitable, types.CoroutineType) else _awaited(awaitable)


def _first_step(
    context: contextvars.Context, coroutine: Coroutine[Any, Any, Any]
) -> tuple[bool, Any]:
    """Run `coroutine` up to its first suspension in `context`: (finished, result or yield)."""
    try:
        return False, context.run(coroutine.send, None)
    except StopIteration as stop:
        return True, stop.value


@types.coroutine
def _in_context(context: contextvars.Context, awaitable: Awaitable[_T]) -> Generator[Any, Any, _T]:
    """Await `awaitable` with every step of it run inside `context`.

    A task would do the same, but costs a task and, below Python 3.11, cannot
    be given a context. (Generators, not a class: the cheapest awaitables.)
    """
    coroutine = _coroutine_of(awaitable)
    finished, value = _first_step(context, coroutine)
    if finished:
        result: _T = value
        return result
    return (yield from _steps_after(context, coroutine, value))


@types.coroutine
def _steps_after(
    context: contextvars.Context, coroutine: Coroutine[Any, Any, _T], yielded: Any
) -> Generator[Any, Any, _T]:
    """Go on stepping `coroutine` inside `context`, from its yield of `yielded`."""
    run = context.run
    while True:
        try:
            message, step = (yield yielded), coroutine.send
        except GeneratorExit:
            run(coroutine.close)
            raise
        except BaseException as thrown:  # noqa: BLE001 -- handed on to the coroutine
            message, step = thrown, coroutine.throw
        try:
            yielded = run(step, message)
        except StopIteration as stop:
            result: _T = stop.value
            return result
