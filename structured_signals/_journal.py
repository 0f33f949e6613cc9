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
from typing import TYPE_CHECKING, Any, TypeVar

from structured_signals._compat import shares_values
from structured_signals._context import changes, read

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterator

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


class _Run:
    """One receiver's writes to one key, from its first to its last."""

    __slots__ = ("after", "before", "first", "last")

    def __init__(self, step: int, before: object, after: object) -> None:
        # Invariant: `first` and `last` are the dispatch's numbers of the
        # receiver's first and last step that wrote the key; `before` is the
        # key's value just before the first, `after` the value the last left.
        self.first = self.last = step
        self.before = before
        self.after = after


class Journal:
    """The write journal of one shared-mode dispatch (SPEC 3.2).

    Each receiver is awaited through `run()` in its own task, whose context
    is the one context all receivers share; every step of it that changed a
    key (a ContextVar, a Local attribute) there is noted with the key's value
    before and after. A receiver's net effect on a key is the value of its
    last write, unless that puts back (by identity) the value the key held
    just before the receiver's first write to it: the context-manager
    pattern, which has none. `writes()` turns the net effects into what each
    receiver hands the merge.
    """

    __slots__ = ("_runs", "_steps")

    def __init__(self, receivers: int) -> None:
        # Invariant: the number of steps, of any receiver, that changed a key
        # so far: numbering them orders every write of the dispatch.
        self._steps = 0
        # Invariant: by receiver index, each key it wrote; None until it writes.
        self._runs: list[dict[Key, _Run] | None] = [None] * receivers

    @types.coroutine
    def run(
        self, index: int, function: Callable[..., Awaitable[_T]], /, **kwargs: Any
    ) -> Generator[Any, Any, _T]:
        """Await `function(**kwargs)`, noting each step's writes as receiver `index`'s.

        Must run in the receiver's own task, in the shared context: the
        coroutine is stepped in whatever context is current, as its task
        would step it, so that its task, cancellation, timeouts and errors
        are those of the task (SPEC 3.8). The call is part of the first step:
        a marked sync callable writes when called.
        """
        before = contextvars.copy_context()
        try:
            coroutine = coroutine_of(function(**kwargs))
            yielded = coroutine.send(None)
        except StopIteration as stop:
            result: _T = stop.value
            return result
        finally:
            self._note(index, before)
        while True:
            try:
                message, step = (yield yielded), coroutine.send
            except GeneratorExit:
                coroutine.close()
                raise
            except BaseException as thrown:  # noqa: BLE001 -- handed on to the coroutine
                message, step = thrown, coroutine.throw
            before = contextvars.copy_context()
            try:
                yielded = step(message)
            except StopIteration as stop:
                result = stop.value
                return result
            finally:
                self._note(index, before)

    def _note(self, index: int, before: contextvars.Context) -> None:
        """Note what the step that began in `before` changed, as receiver `index`'s."""
        after = contextvars.copy_context()
        # Both are copies, never entered: a step that wrote nothing is
        # recognised in O(1) and costs no diff.
        if shares_values(before, after):
            return
        changed = changes(before, after)
        if not changed:
            return  # set and put back within the step
        self._steps += 1
        step = self._steps
        runs = self._runs[index]
        if runs is None:
            runs = self._runs[index] = {}
        for key, value in changed.items():
            run = runs.get(key)
            if run is None:
                runs[key] = _Run(step, read(before, key), value)
            else:
                run.last = step
                run.after = value

    def writes(self) -> Iterator[tuple[int, dict[Key, object]]]:
        """(receiver index, what it hands the merge), in connection order.

        Keys no receiver has a net effect on are in nobody's; a key with one
        net writer is in its; with several, only in the last one's when each
        one's writes to the key came after the previous one's had ended (it
        saw them: two receivers incrementing a counter one after the other
        give 3, as in Django 6.1), and in every one's when their writes
        interleaved, for the merge to settle as a conflict (SPEC 4).
        """
        net_writers: dict[Key, list[tuple[int, _Run]]] = {}
        for index, runs in enumerate(self._runs):
            for key, run in (runs or {}).items():
                if run.after is not run.before:
                    net_writers.setdefault(key, []).append((index, run))
        written: list[dict[Key, object] | None] = [None] * len(self._runs)
        for key, writers in net_writers.items():
            for index, run in _settled(writers):
                kept = written[index]
                if kept is None:
                    kept = written[index] = {}
                kept[key] = run.after
        return ((index, kept) for index, kept in enumerate(written) if kept)


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
