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

__all__ = ("Journal", "coroutine_of", "first_step", "hide_stepping", "in_context", "steps_after")

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

    Each receiver's task runs its coroutine through `run()` (its first step,
    then, if it suspended, the `_Stepped` rest of it), in the one context all
    receivers share; every step of it that changed that context is noted,
    with copies of the context before and after it. A receiver's net effect on a key (a
    ContextVar, a Local attribute) is the value of its last write, unless
    that puts back (by identity) the value the key held just before the
    receiver's first write to it: the context-manager pattern, which has
    none. `writes()` turns the net effects into what each receiver hands the
    merge.
    """

    __slots__ = (
        "_deadlock_flag",
        "_first_flag",
        "_last",
        "_mapping",
        "_set_aside",
        "_shared",
        "_steps",
        "_wrapped",
    )

    def __init__(self, shared: contextvars.Context) -> None:
        # Invariant: only the receivers' tasks ever enter `shared`, and every
        # step they take ends in a check of it: so the context a step begins
        # in is the one the previous step (of any receiver) ended in, `_last`
        # (a copy, never entered), whose mapping is `_mapping`, once what
        # other code wrote there in between is set aside (`_prepare`), never
        # noted. Such code runs in a receiver's task before its first step
        # (a task factory may write in the context it is given), or around
        # its steps when the task runs a wrapper coroutine that awaits the
        # dispatch's (`_wrapped`): a loop's task factory (Sentry's and
        # OpenTelemetry's asyncio integrations), a patched
        # `TaskGroup.create_task` (OpenTelemetry's instrumentor). So a first
        # step always begins with a check, a later one only once `_wrapped`.
        self._shared = shared
        self._wrapped = False
        # asgiref's deadlock flag as the dispatch began: each receiver's first.
        self._first_flag = shared.get(DEADLOCK_FLAG, False)
        # Invariant: the flag as `shared` holds it now (as the last step left it).
        self._deadlock_flag = self._first_flag
        self._last = shared.copy()
        self._mapping = mapping_of(self._last)
        # Invariant: True once a write outside the steps was set aside.
        self._set_aside = False
        # Invariant: every step that changed the shared context, in the order
        # they ran: (receiver index, copy before, copy after, copy as the
        # receiver's previous step left it or None). What each changed is
        # read only at the end, and only where needed.
        self._steps: list[_Step] = []

    # A step that wrote nothing is recognised in O(1), with no copy and no
    # diff; a step that wrote is noted with a copy. The checks are inline:
    # they run once per step of every shared-mode receiver.

    def first_step(
        self, index: int, receiver: Callable[..., Any], signal: Any, sender: Any, named: Any
    ) -> tuple[bool, Any]:
        """Call receiver `index` and run it up to its first suspension, in its task.

        (True, its result) when it finished in that step, as most do;
        (False, the rest of it to await) when it suspended. The call is part
        of the step: a receiver marked with `markcoroutinefunction` may
        write before it returns its awaitable.
        """
        mapping = mapping_of(self._shared)
        if mapping is not self._mapping or self._deadlock_flag is not self._first_flag:
            self._prepare(mapping, self._first_flag)
        try:
            coroutine = coroutine_of(receiver(signal=signal, sender=sender, **named))
            yielded = coroutine.send(None)
        except StopIteration as stop:
            return True, stop.value
        finally:
            mapping = mapping_of(self._shared)
            if mapping is not self._mapping:
                self._note(index, mapping, None)
        return False, _Stepped(self, index, coroutine, yielded)

    async def run(
        self, index: int, receiver: Callable[..., Any], signal: Any, sender: Any, named: Any
    ) -> Any:
        """Call receiver `index` and await it, each step of it noted."""
        finished, result = self.first_step(index, receiver, signal, sender, named)
        return result if finished else await result

    def wrapped_task(self) -> None:
        """Note that a receiver's task runs a wrapper around the dispatch's coroutine."""
        self._wrapped = True

    def note_writes(self, index: int) -> None:
        """Note what the shared context got since the last step ended as receiver `index`'s.

        For its task's own code after a step: a robust dispatch logging the
        receiver's failure (a logging handler may write a ContextVar).
        """
        mapping = mapping_of(self._shared)
        if mapping is not self._mapping:
            self._note(index, mapping, None)

    def _prepare(self, mapping: object, flag: bool) -> None:
        """Ready the shared context, which holds `mapping`, for a step of a receiver.

        What was written outside any receiver's step is taken as it was; the
        receiver's asgiref flag is put back as its previous step left it
        (`flag`): it means "this task" (`DEADLOCK_FLAG`).
        """
        if mapping is not self._mapping:
            self._last, self._mapping = contextvars.copy_context(), mapping
            self._deadlock_flag = DEADLOCK_FLAG.get(False)
            self._set_aside = True
        if self._deadlock_flag is not flag:
            DEADLOCK_FLAG.set(flag)

    def _note(self, index: int, mapping: object, seen: contextvars.Context | None) -> None:
        """Note that the step of receiver `index` that just ended wrote: it left `mapping`.

        `seen`: the context as the receiver's previous step left it.
        """
        after = contextvars.copy_context()
        self._steps.append((index, self._last, after, seen))
        self._last, self._mapping = after, mapping
        # The flag is in the context: unwritten, it is as it was.
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
        if len(writers) == 1 and not self._set_aside:
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


class _Stepped(Generator[Any, Any, _T]):
    """The rest of a receiver's coroutine, each step of it noted in a journal.

    Its task awaits it once the first step suspended (`Journal.first_step`): the
    task steps it as it would the coroutine itself (send, throw), so that
    the receiver keeps its task, cancellation, timeouts and errors (SPEC
    3.8). (A class, not a generator around the coroutine: the task's stack
    and call graph show the receiver's frames through `cr_await`.)
    """

    __slots__ = ("_coroutine", "_deadlock_flag", "_index", "_journal", "_seen", "_yielded")

    def __init__(
        self, journal: Journal, index: int, coroutine: Coroutine[Any, Any, _T], yielded: Any
    ) -> None:
        self._journal = journal
        self._index = index
        self._coroutine = coroutine
        # Invariant: what the coroutine's first step yielded until the task
        # has it, then `_HANDED`.
        self._yielded = yielded
        # Invariant: the journal's context as this receiver's previous step
        # left it (what it saw when it suspended).
        self._seen = journal._last
        # Invariant: asgiref's deadlock flag as this receiver's previous step
        # left it, put back in the shared context before each of its steps.
        self._deadlock_flag = journal._deadlock_flag

    def __await__(self) -> Generator[Any, Any, _T]:
        return self

    def send(self, value: Any = None) -> Any:
        if self._yielded is not _HANDED:
            yielded, self._yielded = self._yielded, _HANDED
            return yielded
        journal = self._journal
        if journal._wrapped or journal._deadlock_flag is not self._deadlock_flag:
            journal._prepare(mapping_of(journal._shared), self._deadlock_flag)
        try:
            return self._coroutine.send(value)
        finally:
            mapping = mapping_of(journal._shared)
            if mapping is not journal._mapping:
                journal._note(self._index, mapping, self._seen)
            self._seen, self._deadlock_flag = journal._last, journal._deadlock_flag

    # An awaiting frame sends None through the iterator slot: no call more.
    __next__ = send

    def throw(self, error: Any, value: Any = None, traceback: Any = None) -> Any:
        journal = self._journal
        if journal._wrapped or journal._deadlock_flag is not self._deadlock_flag:
            journal._prepare(mapping_of(journal._shared), self._deadlock_flag)
        try:
            if value is None and traceback is None:
                return self._coroutine.throw(error)
            return self._coroutine.throw(error, value, traceback)
        finally:
            mapping = mapping_of(journal._shared)
            if mapping is not journal._mapping:
                journal._note(self._index, mapping, self._seen)
            self._seen, self._deadlock_flag = journal._last, journal._deadlock_flag

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


_HANDED = object()


# The journal's own frames between a receiver's task and the receiver.
_STEPPING_CODES = frozenset(
    {
        _awaited.__code__,
        Journal.first_step.__code__,
        Journal.run.__code__,
        _Stepped.send.__code__,
        _Stepped.throw.__code__,
    }
)


def hide_stepping(error: BaseException) -> None:
    """Take the journal's own frames out of `error`'s traceback.

    A receiver's exception then reads as it does in a task of its own
    (SPEC 3.8), frames of its own and the dispatch's `call` only.
    """
    traceback = error.__traceback__
    while traceback is not None and traceback.tb_next is not None:
        if traceback.tb_next.tb_frame.f_code in _STEPPING_CODES:
            traceback.tb_next = traceback.tb_next.tb_next
        else:
            traceback = traceback.tb_next
