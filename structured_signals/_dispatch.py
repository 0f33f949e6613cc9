"""The dispatch runner: one dispatch of a signal to its live receivers.

Sync receivers run first, one after another, each in a copy of the previous
one's context; async receivers then run together in a TaskGroup, in one
shared copy of that context (each step of each receiver noted in a write
journal, `_journal.Journal`) or in one copy each. Nothing is written into the
caller's context until every receiver has finished; then the receivers'
changes (shared: their net effects) are merged in (`_context.merge`). A dispatch that raises merges
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
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

from asgiref.sync import async_to_sync, sync_to_async

from structured_signals._compat import (
    BaseExceptionGroup,
    LookupKey,
    ReceiverTaskGroup,
    asgiref_carrier,
    cancels_its_tasks,
    live_keys,
    maybe_written,
    rehomed,
    shares_values,
    still_connected,
    timeout_at,
    with_asgiref_of_current,
)
from structured_signals._context import Writer, merge_into_current
from structured_signals._journal import Journal, in_context

if TYPE_CHECKING:
    from structured_signals._signal import StructuredSignal

__all__ = ("Connections", "Dispatch", "Responses", "describe")

Receiver = Callable[..., Any]
Responses = list[tuple[Receiver, Any]]
ContextMode = Literal["shared", "isolated"]

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
        "abandoned",
        "async_base",
        "async_writers",
        "base",
        "connections",
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
        self,
        signal: StructuredSignal,
        sender: Any,
        named: dict[str, Any],
        *,
        robust: bool,
        connections: Connections,
    ) -> None:
        self.signal = signal
        self.sender = sender
        self.named = named
        self.robust = robust
        self.isolated = signal.context == "isolated"
        self.on_conflict = signal.on_conflict
        self.timeout = signal.timeout
        self.connections = connections
        # Invariant: set once the caller stopped waiting for the sync
        # receivers' thread; the ones that had not started then never start.
        self.abandoned = False
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

    def run_from_sync(self, async_receivers: list[Receiver]) -> Responses:
        """The async receivers of a sync send(), through async_to_sync; changes merged.

        send() has already called the sync receivers in the caller's own
        context, as Django does, so they are no part of this dispatch (its
        `connections` are send()'s: a sync receiver may have disconnected one
        of these since).
        """
        self.run_async_from_sync(async_receivers)
        self.merge_into_caller()
        return self.responses

    def run_sync(self, receivers: list[Receiver]) -> None:
        """Run sync receivers here, in order, each seeing the previous one's writes."""
        context = self._at_home(self.base)
        for index, receiver in enumerate(receivers):
            if self.abandoned:
                return
            if not self.connections.still_connected(index, False):
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
        try:
            await in_context(asgiref_carrier(), hop(receivers))
        except asyncio.CancelledError:
            # The thread goes on with the receiver it is running (nothing
            # stops a thread); run_sync starts no other one after this.
            self.abandoned = True
            raise
        self.sync_ran_elsewhere = True

    async def run_async(self, receivers: list[Receiver], *, from_sync: bool = False) -> None:
        """Run async receivers concurrently in a TaskGroup, on the current loop.

        Each one, a lone one too, runs in a task of its own (SPEC 3.8).
        `from_sync`: run by `async_to_sync` for a sync `send()`.
        """
        # Where the sync receivers left off, re-homed if they ran in another
        # thread or this is not the caller's thread.
        start = self.sync_writers[-1].context if self.sync_writers else self.base
        if self.sync_ran_elsewhere or threading.get_ident() != self.thread:
            start = rehomed(start)
        if from_sync:
            start = with_asgiref_of_current(start)
        self.async_base = start
        journal = None
        if self.isolated:
            contexts = [start.copy() for _ in receivers]
        else:
            shared = start.copy()
            contexts = [shared] * len(receivers)
            # What reaches the caller from a shared context is computed from
            # what each receiver wrote in it, step by step (SPEC 3.2). A lone
            # receiver's net effect is what its context holds at the end.
            if len(receivers) > 1:
                journal = Journal(shared)
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
        group: ReceiverTaskGroup | None = None

        # Sync receivers cannot be interrupted: the timeout bounds the async
        # ones, each on its own when robust (its TimeoutError is its response),
        # all together otherwise (one TimeoutError for the dispatch).
        deadline = None
        if self.timeout is not None:
            deadline = asyncio.get_running_loop().time() + self.timeout
        each_deadline, group_deadline = (deadline, None) if self.robust else (None, deadline)
        signal, sender, named = self.signal, self.sender, self.named
        connections = self.connections
        edits = connections.edits

        async def call(index: int, receiver: Receiver) -> None:
            # The common case of still_connected() inline: this runs once per receiver.
            if signal._edits != edits and not connections.still_connected(index, True):
                skipped[index] = True
                return
            try:
                if each_deadline is None:
                    outcomes[index] = await receiver(signal=signal, sender=sender, **named)
                else:
                    async with timeout_at(each_deadline):
                        outcomes[index] = await receiver(signal=signal, sender=sender, **named)
            except BaseException as err:
                assert group is not None  # set before the first task starts
                own = _own_cancellation(err, group)
                if self.robust and (own or isinstance(err, Exception)):
                    _log_failure(receiver, err)
                    outcomes[index] = err
                    failed[index] = True
                    return
                if populating:
                    await asyncio.sleep(0)
                # The TaskGroup would take a receiver's own CancelledError for
                # the receiver being cancelled, and go on without a word.
                if own:
                    raise _ReceiverCancelled(err) from None
                raise

        def populate(task_group: ReceiverTaskGroup) -> None:
            nonlocal populating, group
            group = task_group
            create_task = task_group.create_task
            for index, receiver in enumerate(receivers):
                coroutine = call(index, receiver)
                if journal is not None:
                    coroutine = journal.stepped(index, coroutine)
                create_task(coroutine, context=contexts[index])
            populating = False

        failure: BaseException | None = None
        try:
            if group_deadline is None:
                async with ReceiverTaskGroup() as task_group:
                    populate(task_group)
            else:
                async with timeout_at(group_deadline), ReceiverTaskGroup() as task_group:
                    populate(task_group)
        except _ReceiverCancelled as error:
            failure = error.cancelled
        except BaseExceptionGroup as group_error:
            errors = [_unwrapped(error) for error in group_error.exceptions]
            failure = (
                errors[0]
                if len(errors) == 1
                else BaseExceptionGroup("errors raised by receivers", errors)
            )
        if failure is not None:
            # Raised outside the except clause: a receiver's exception keeps
            # its own __cause__, __context__ and __suppress_context__.
            raise failure
        if journal is not None:
            # A robust dispatch's failed receivers too: they wrote in the shared context.
            for index, changed in journal.writes():
                self.async_writers.append(
                    Writer(partial(describe, receivers[index]), shared, changed)
                )
        if any(skipped):
            kept = [index for index, skip in enumerate(skipped) if not skip]
            receivers = [receivers[index] for index in kept]
            outcomes = [outcomes[index] for index in kept]
            contexts = [contexts[index] for index in kept]
            failed = [failed[index] for index in kept]
        self.responses.extend(zip(receivers, outcomes))
        if journal is not None:
            return
        # An unwritten copy has nothing to merge: recognised in O(1).
        written = maybe_written(start, contexts)
        for receiver, context, wrote, lost in zip(receivers, contexts, written, failed):
            # A robust dispatch drops a failed receiver's writes only when they
            # are its own (isolated); a shared context keeps them.
            if wrote and not (lost and self.isolated):
                self.async_writers.append(Writer(partial(describe, receiver), context))

    def run_async_from_sync(self, receivers: list[Receiver]) -> None:
        """Run async receivers from sync code, through async_to_sync."""
        asgiref_carrier().run(async_to_sync(self._run_async_from_sync), receivers)

    async def _run_async_from_sync(self, receivers: list[Receiver]) -> None:
        await self.run_async(receivers, from_sync=True)

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

    def _at_home(self, context: contextvars.Context) -> contextvars.Context:
        """`context`, re-homed if this is not the caller's thread."""
        return context if threading.get_ident() == self.thread else rehomed(context)


class Connections:
    """Which of a dispatch's live receivers are still connected, as it goes on.

    A receiver whose disconnect() has returned is not called any more, not
    even by a dispatch under way. Decided by the lookup key it was connected
    under, as disconnect() decides: identity fails for a WeakMethod (a new
    bound method per call) and for a receiver a tracing library wrapped, and
    disconnecting it for one sender or dispatch_uid leaves its other
    connections alone.
    """

    __slots__ = ("edits", "entries", "keys", "sender", "signal")

    def __init__(
        self, signal: StructuredSignal, sender: Any, edits: int, entries: list[Any]
    ) -> None:
        """`edits`, `entries` and the receivers: as `signal._look_up(sender)` gave them."""
        self.signal = signal
        self.sender = sender
        self.edits = edits
        # Invariant: `entries` is the `signal.receivers` list the dispatch's
        # receivers were looked up from, which nobody edits any more but for
        # appending; `keys`, their lookup keys, is read from it only once a
        # connect() or disconnect() happened during the dispatch.
        self.entries = entries
        self.keys: tuple[list[LookupKey], list[LookupKey]] | None = None

    def still_connected(self, index: int, asynchronous: bool) -> bool:
        """False once the disconnect() of the `index`th sync or async receiver has returned."""
        if self.signal._edits == self.edits:
            return True
        if self.keys is None:
            self.keys = live_keys(self.entries, self.sender)
        return still_connected(self.signal, self.keys[asynchronous][index])


def _log_failure(receiver: Receiver, err: BaseException) -> None:
    logger.error(
        "Error calling %s in Signal.send_robust() (%s)",
        _qualname(receiver),
        err,
        exc_info=err,
    )


class _ReceiverCancelled(Exception):
    """Carries a receiver's own CancelledError through the TaskGroup."""

    def __init__(self, cancelled: BaseException) -> None:
        super().__init__(cancelled)
        self.cancelled = cancelled


def _unwrapped(error: BaseException) -> BaseException:
    return error.cancelled if isinstance(error, _ReceiverCancelled) else error


def _own_cancellation(err: BaseException, group: ReceiverTaskGroup) -> bool:
    """Whether `err` is the receiver's own CancelledError, as awaiting its task would raise.

    It raised it itself, or its task was cancelled by itself or by anyone
    holding it. Not one the dispatch's `group` threw into it while cancelling
    its tasks (a sibling failed, the caller was cancelled, the dispatch timed
    out): that task then counts a request, made once the group was aborting.
    """
    if not isinstance(err, asyncio.CancelledError):
        return False
    task = asyncio.current_task()
    return task is None or task.cancelling() == 0 or not cancels_its_tasks(group)


def _awaitable_from_sync_receiver(receiver: Receiver, response: Any) -> TypeError:
    if inspect.iscoroutine(response):
        response.close()  # it will never run: no "was never awaited" warning
    return TypeError(
        f"{describe(receiver)} was connected as a sync receiver but returned "
        f"{type(response).__name__}, an awaitable the signal would never await. "
        "Define it with 'async def', or mark it with asgiref.sync.markcoroutinefunction()."
    )
