"""Running a coroutine step by step inside a context, and what each step wrote.

A step is a coroutine's run from one resumption to its next suspension. The
dispatch steps a coroutine itself where a task would cost more than it gives
(`in_context`, `first_step`, `steps_after`), and, in shared mode, steps each
async receiver in its own task to keep a write journal (`Journal`): what
each step changed in the one context the receivers share. What reaches the
caller is computed from the journal, not from the shared context's final
state (SPEC 3.2), so two receivers that each set and restore a variable
around an `await` (`translation.override()`, a tracing span) leave the caller
as it was, however their restores interleave.
"""

from __future__ import annotations

import contextvars
import types
from collections.abc import Coroutine, Generator
from typing import TYPE_CHECKING, Any, TypeVar

from structured_signals._compat import DEADLOCK_FLAG, mapping_of
from structured_signals._context import changes, read

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from structured_signals._context import Key

__all__ = ("Journal", "coroutine_of", "first_step", "in_context", "steps_after")

_T = TypeVar("_T")


async def _awaited(awaitable: Awaitable[_T]) -> _T:
    return await awaitable


def coroutine_of(awaitable: Awaitable[_T]) -> Coroutine[Any, Any, _T]:
    """`awaitable` as a coroutine that can be stepped with send() and throw()."""
    return awaitable if isinstance(awaitable, types.CoroutineType) else _awaited(awaitable)


def first_step(
    context: contextvars.Context, coroutine: Coroutine[Any, Any, Any]
) -> tuple[bool, Any]:
    """Run `coroutine` up to its first suspension in `context`: (finished, result or yield)."""
    try:
        return False, context.run(coroutine.send, None)
    except StopIteration as stop:
        return True, stop.value


@types.coroutine
def in_context(context: contextvars.Context, awaitable: Awaitable[_T]) -> Generator[Any, Any, _T]:
    """Await `awaitable` with every step of it run inside `context`.

    A task would do the same, but costs a task and, below Python 3.11, cannot
    be given a context. (Generators, not a class: the cheapest awaitables.)
    """
    coroutine = coroutine_of(awaitable)
    finished, value = first_step(context, coroutine)
    if finished:
        result: _T = value
        return result
    return (yield from steps_after(context, coroutine, value))


@types.coroutine
def steps_after(
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


# (receiver index, copy before, copy after, copy as its previous step left it)
_Step = tuple[int, contextvars.Context, contextvars.Context, "contextvars.Context | None"]


class _Run:
    """One receiver's writes to one key, from its first to its last."""

    __slots__ = ("after", "before", "first", "last")

    def __init__(self, step: int, before: object, after: object) -> None:
        # Invariant: `first` and `last` number the receiver's first and last
        # step that wrote the key, in the order the dispatch's steps ran;
        # `before` is the key's value just before the first, `after` the
        # value the last left.
        self.first = self.last = step
        self.before = before
        self.after = after


class Journal:
    """The write journal of one shared-mode dispatch (SPEC 3.2).

    Each receiver's task runs its coroutine through `stepped()`, in the one
    context all receivers share; every step of it that changed that context
    is noted, with copies of the context before and after it. A receiver's
    net effect on a key (a ContextVar, a Local attribute) is the value of its
    last write, unless that puts back (by identity) the value the key held
    just before the receiver's first write to it: the context-manager
    pattern, which has none. `writes()` turns the net effects into what each
    receiver hands the merge.
    """

    __slots__ = (
        "_deadlock_flag",
        "_first_flag",
        "_last",
        "_mapping",
        "_shared",
        "_steps",
        "_wrapped",
    )

    def __init__(self, shared: contextvars.Context) -> None:
        # Invariant: only the receivers' tasks ever enter `shared`, and every
        # step they take ends in `_Stepped`'s check: so the context a step
        # begins in is the one the previous step (of any receiver) ended in,
        # `_last` (a copy, never entered), whose mapping is `_mapping`.
        self._shared = shared
        # asgiref's deadlock flag as the dispatch began: each receiver's first.
        self._first_flag = shared.get(DEADLOCK_FLAG, False)
        # Invariant: the flag as `shared` holds it now (as the last step left it).
        self._deadlock_flag = self._first_flag
        # Invariant: True once a receiver's task runs its stepped coroutine
        # inside a wrapper of the loop's task factory (Sentry's and
        # OpenTelemetry's asyncio integrations), whose code runs in the shared
        # context between the receivers' steps: what it writes there is set
        # aside (`_set_aside`) at the start of the next step, never noted.
        self._wrapped = False
        self._last = shared.copy()
        self._mapping = mapping_of(self._last)
        # Invariant: every step that changed the shared context, in the order
        # they ran: (receiver index, copy before, copy after, copy as the
        # receiver's previous step left it or None). What each changed is
        # read only at the end, and only where needed.
        self._steps: list[_Step] = []

    def stepped(self, index: int, coroutine: Coroutine[Any, Any, _T]) -> _Stepped[_T]:
        """`coroutine`, for receiver `index`'s task to run: its steps are noted here."""
        return _Stepped(self, index, coroutine)

    def _note(self, index: int, mapping: object, seen: contextvars.Context | None) -> None:
        """Note that the step of receiver `index` that just ended wrote: it left `mapping`.

        `seen`: the context as the receiver's previous step left it.
        """
        after = contextvars.copy_context()
        self._steps.append((index, self._last, after, seen))
        self._last, self._mapping = after, mapping

    def _set_aside(self) -> None:
        """Take what was written in the shared context outside any receiver's step as it was."""
        mapping = mapping_of(self._shared)
        if mapping is not self._mapping:
            self._last, self._mapping = contextvars.copy_context(), mapping
            self._deadlock_flag = DEADLOCK_FLAG.get(False)

    def writes(self) -> list[tuple[int, dict[Key, object]]]:
        """(receiver index, what it hands the merge), in connection order.

        Keys no receiver has a net effect on are in nobody's; a key with one
        net writer is in its; with several, only in the last one's when each
        one's writes to the key came after the previous one's had ended (it
        saw them: two receivers incrementing a counter one after the other
        give 3, as in Django 6.1), and in every one's when their writes
        interleaved, for the merge to settle as a conflict (SPEC 4).
        """
        steps = self._steps
        if not steps:
            return []
        writers = {step[0] for step in steps}
        if len(writers) == 1 and not self._wrapped:
            # One writer: each key's value before its first write is the one
            # before the dispatch, so its net effects are one diff (unless
            # something was set aside between its steps).
            changed = changes(steps[0][1], steps[-1][2])
            return [(writers.pop(), changed)] if changed else []
        net_writers: dict[Key, list[tuple[int, _Run]]] = {}
        for index, runs in sorted(_runs(steps).items()):
            for key, run in runs.items():
                if run.after is not run.before:
                    net_writers.setdefault(key, []).append((index, run))
        written: dict[int, dict[Key, object]] = {}
        for key, net in net_writers.items():
            for index, run in _settled(net):
                written.setdefault(index, {})[key] = run.after
        return sorted(written.items())


def _runs(steps: list[_Step]) -> dict[int, dict[Key, _Run]]:
    """By receiver index, each key it changed, from the steps that wrote.

    A step that puts back the value the receiver saw when it last suspended,
    over a sibling's write it never saw, did not write the key: that is a
    stale copy of the context set back, as asgiref's sync_to_async does
    with every variable after its thread returns (an ORM call), and it must
    not undo the sibling's write.
    """
    runs: dict[int, dict[Key, _Run]] = {}
    for number, (index, before, after, seen) in enumerate(steps):
        written = runs.setdefault(index, {})
        for key, value in changes(before, after).items():
            if seen is not None and value is read(seen, key):
                continue
            run = written.get(key)
            if run is None:
                written[key] = _Run(number, read(before, key), value)
            else:
                run.last = number
                run.after = value
    return runs


def _settled(writers: list[tuple[int, _Run]]) -> list[tuple[int, _Run]]:
    """The net writers of a key whose values reach the merge.

    `writers` is in connection order; the last in time when none of their
    writes interleaved, all of them otherwise.
    """
    if len(writers) == 1:
        return writers
    in_time = sorted(writers, key=lambda writer: writer[1].first)
    if all(earlier.last < later.first for (_, earlier), (_, later) in zip(in_time, in_time[1:])):
        return in_time[-1:]
    return writers


class _Stepped(Coroutine[Any, Any, _T]):
    """A coroutine whose every step is noted in a journal as one receiver's.

    What the receiver's task runs, in the shared context: the task steps it
    as it would the coroutine itself (send, throw), so that the receiver
    keeps its task, cancellation, timeouts and errors (SPEC 3.8). (A class
    the task calls, not a generator around the coroutine: no frame more to
    resume per step.)
    """

    __slots__ = ("_coroutine", "_deadlock_flag", "_index", "_journal", "_seen")

    # A step that wrote nothing is recognised in O(1), with no copy and no
    # diff; a step that wrote is noted with a copy (inline: this runs once
    # per step of every shared-mode receiver).

    def __init__(self, journal: Journal, index: int, coroutine: Coroutine[Any, Any, _T]) -> None:
        self._journal = journal
        self._index = index
        self._coroutine = coroutine
        # Invariant: the journal's context as this receiver's previous step
        # left it (what it saw when it suspended); None before its first step.
        self._seen: contextvars.Context | None = None
        # Invariant: asgiref's deadlock flag as this receiver's previous step
        # left it, put back in the shared context before each of its steps.
        self._deadlock_flag = journal._first_flag

    def send(self, value: Any) -> Any:
        journal = self._journal
        if journal._wrapped:
            journal._set_aside()
        if journal._deadlock_flag is not self._deadlock_flag:
            DEADLOCK_FLAG.set(self._deadlock_flag)
        try:
            return self._coroutine.send(value)
        finally:
            mapping = mapping_of(journal._shared)
            if mapping is not journal._mapping:
                # The flag is in the context: unwritten, it is as it was.
                self._deadlock_flag = journal._deadlock_flag = DEADLOCK_FLAG.get(False)
                journal._note(self._index, mapping, self._seen)
            self._seen = journal._last

    def throw(self, error: Any, value: Any = None, traceback: Any = None) -> Any:
        journal = self._journal
        if journal._wrapped:
            journal._set_aside()
        if journal._deadlock_flag is not self._deadlock_flag:
            DEADLOCK_FLAG.set(self._deadlock_flag)
        try:
            if value is None and traceback is None:
                return self._coroutine.throw(error)
            return self._coroutine.throw(error, value, traceback)
        finally:
            mapping = mapping_of(journal._shared)
            if mapping is not journal._mapping:
                # The flag is in the context: unwritten, it is as it was.
                self._deadlock_flag = journal._deadlock_flag = DEADLOCK_FLAG.get(False)
                journal._note(self._index, mapping, self._seen)
            self._seen = journal._last

    def close(self) -> None:
        self._coroutine.close()

    # What asyncio reads of a task's coroutine to show where it is suspended
    # (Task.get_stack(), capture_call_graph(), `python -m asyncio pstree`,
    # the task's repr): the receiver's, not the wrapper's.
    @property
    def cr_await(self) -> Any:
        return getattr(self._coroutine, "cr_await", None)

    @property
    def cr_frame(self) -> Any:
        return getattr(self._coroutine, "cr_frame", None)

    @property
    def cr_code(self) -> Any:
        return getattr(self._coroutine, "cr_code", None)

    @property
    def cr_running(self) -> bool:
        return bool(getattr(self._coroutine, "cr_running", False))

    def __await__(self) -> Generator[Any, Any, _T]:
        """Step it from a task factory's wrapper that awaits it, as the task would.

        (No __next__ on the class: a task then calls send() itself.)
        """
        self._journal._wrapped = True
        message: Any = None
        step: Callable[[Any], Any] = self.send
        while True:
            try:
                yielded = step(message)
            except StopIteration as stop:
                result: _T = stop.value
                return result
            try:
                message, step = (yield yielded), self.send
            except GeneratorExit:
                self.close()
                raise
            except BaseException as thrown:  # noqa: BLE001 -- handed on to the coroutine
                message, step = thrown, self.throw
