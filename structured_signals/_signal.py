"""StructuredSignal: django.dispatch.Signal whose receivers keep the caller's context."""

from __future__ import annotations

import asyncio
import inspect
import math
from typing import TYPE_CHECKING, Any, TypeVar, get_args

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.dispatch import Signal
from django.dispatch.dispatcher import NO_RECEIVERS

from structured_signals._compat import SENDS_FROM_A_COMPREHENSION, live_receivers
from structured_signals._dispatch import (
    Connections,
    ContextMode,
    Dispatch,
    Responses,
    _awaitable_from_sync_receiver,
    _log_failure,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

    from structured_signals._context import OnConflict

__all__ = ("StructuredSignal", "upgrade")

_T = TypeVar("_T")
_CONTEXT_MODES: tuple[str, ...] = get_args(ContextMode)
_CONFLICT_POLICIES = ("raise", "first", "last")


def _check_options(context: object, on_conflict: object, timeout: object) -> None:
    """Raise ValueError, saying what to pass instead, for an unknown option value."""
    if context not in _CONTEXT_MODES:
        raise ValueError(
            f"StructuredSignal(context={context!r}) is not a context mode: "
            f"use one of {', '.join(map(repr, _CONTEXT_MODES))}."
        )
    if not callable(on_conflict) and on_conflict not in _CONFLICT_POLICIES:
        raise ValueError(
            f"StructuredSignal(on_conflict={on_conflict!r}) is not a conflict policy: "
            f"use one of {', '.join(map(repr, _CONFLICT_POLICIES))}, or a callable "
            "that takes the Conflict and returns the value to keep."
        )
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not _finite(timeout)
    ):
        raise ValueError(
            f"StructuredSignal(timeout={timeout!r}) is not a timeout: use None (no "
            "timeout) or the finite number of seconds the async receivers may take, above 0."
        )


def _finite(timeout: float) -> bool:
    """Above 0, and a deadline the event loop can compute (10**400 is not)."""
    try:
        return timeout > 0 and math.isfinite(timeout)
    except OverflowError:
        return False


class StructuredSignal(Signal):
    """A `django.dispatch.Signal` whose receivers' context writes reach the caller.

    Sync receivers run first, in connection order; async receivers then run
    concurrently in an `asyncio.TaskGroup`. What the receivers change in
    ContextVars and `asgiref.local.Local` is merged back into the caller when
    the dispatch succeeds (#36714, #36315), and nothing is when it raises.

    context="shared" runs all async receivers in one copy of the caller's
    context, so they see each other's writes as they happen; "isolated" gives
    each its own copy of the same snapshot, and two receivers writing one
    variable is a conflict, settled by `on_conflict`: "raise" (raise
    ContextConflictError), "first" or "last" (the first or last writer in
    connection order, the caller counting first), or a callable that receives
    the Conflict and returns the value to keep. `timeout` (seconds) bounds the
    async receivers: past it they are cancelled and the dispatch raises
    TimeoutError, merging nothing (robust variants: TimeoutError becomes the
    response of each receiver that had not finished).
    """

    def __init__(
        self,
        use_caching: bool = False,
        *,
        context: ContextMode = "shared",
        on_conflict: OnConflict = "raise",
        timeout: float | None = None,
    ) -> None:
        super().__init__(use_caching=use_caching)
        self._configure(context, on_conflict, timeout)

    def _configure(
        self, context: ContextMode, on_conflict: OnConflict, timeout: float | None
    ) -> None:
        _check_options(context, on_conflict, timeout)
        self.context = context
        self.on_conflict = on_conflict
        self.timeout = timeout
        # Read before each sync receiver by send(): an instance attribute is
        # the quickest to read. (_configure runs once per signal object.)
        self._edits = 0

    # Invariant: odd while a connect() or disconnect() is under way, and
    # bumped past it when it returns, so that a dispatch can tell that the
    # receivers it looked up may have changed (see `_look_up`).
    _edits: int

    def connect(self, receiver: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Connect `receiver`, as Django does, but refuse a non-callable always.

        An object whose `__call__` is `async def` is marked as a coroutine
        function, so that it is awaited rather than called in a thread. The
        other arguments go on unchanged (ModelSignal adds `apps`).
        """
        if not callable(receiver):
            raise TypeError(
                f"Signal receivers must be callable. {receiver!r} is a "
                f"{type(receiver).__qualname__}: connect a function, a method or an "
                "object with a __call__ method."
            )
        if _calls_async(receiver):
            try:
                markcoroutinefunction(receiver)
            except AttributeError:
                raise TypeError(
                    f"{receiver!r} has an async __call__ that cannot be marked as one "
                    "(its class has __slots__): connect its bound method instead, "
                    "signal.connect(obj.__call__)."
                ) from None
        self._edit(super().connect, receiver, *args, **kwargs)

    def disconnect(self, *args: Any, **kwargs: Any) -> bool:
        """Disconnect as Django does; a dispatch under way then skips the receiver."""
        disconnected: bool = self._edit(super().disconnect, *args, **kwargs)
        return disconnected

    def _edit(self, edit: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """Run Django's connect() or disconnect(), telling dispatches under way."""
        with self.lock:
            self._edits += 1
            # Invariant: Django edits `receivers` in place; a dispatch under way
            # keeps the list it looked its receivers up from, and this one
            # is not edited by anyone any more.
            self.receivers = self.receivers.copy()
        try:
            return edit(*args, **kwargs)
        finally:
            with self.lock:
                self._edits += 1

    def _look_up(
        self, sender: Any
    ) -> tuple[int, list[Any], list[Callable[..., Any]], list[Callable[..., Any]]]:
        """(edits, receivers' entries, sync receivers, async receivers) for `sender`.

        The live receivers and the entries of `receivers` they were looked up
        from, with no connect() or disconnect() in between: a dispatch decides
        by their positions there which lookup key each was connected under.
        """
        while True:
            edits, entries = self._edits, self.receivers
            sync_receivers, async_receivers = live_receivers(self, sender)
            if not edits & 1 and self._edits == edits:
                return edits, entries, sync_receivers, async_receivers

    # send() and send_robust() call their sync receivers themselves, in the
    # caller's own context and from the frame Django's own calls them from:
    # a receiver's writes are the caller's as they happen (a ContextVar token
    # set by one send()'s receiver can be reset by a later one's), and a
    # `warnings.warn(stacklevel=...)` in it counts the frames Django's does.
    # Only the async receivers go through a Dispatch, merged back as usual.
    if SENDS_FROM_A_COMPREHENSION:

        def send(self, sender: Any, **named: Any) -> Responses:
            """Send the signal from sync code; async receivers run via async_to_sync.

            Returns [(receiver, response), ...]: sync receivers first, then
            async ones, each in connection order. The first error propagates.
            """
            if not self.receivers or self.sender_receivers_cache.get(sender) is NO_RECEIVERS:
                return []
            edits, entries, sync_receivers, async_receivers = self._look_up(sender)
            responses = [
                (receiver, _sync_response(receiver, receiver(signal=self, sender=sender, **named)))
                for index, receiver in enumerate(sync_receivers)
                if self._edits == edits
                or Connections(self, sender, edits, entries).still_connected(index, False)
            ]
            if async_receivers:
                connections = Connections(self, sender, edits, entries)
                dispatch = Dispatch(self, sender, named, robust=False, connections=connections)
                responses += dispatch.run_from_sync(async_receivers)
            return responses

    else:

        def send(self, sender: Any, **named: Any) -> Responses:
            """Send the signal from sync code; async receivers run via async_to_sync.

            Returns [(receiver, response), ...]: sync receivers first, then
            async ones, each in connection order. The first error propagates.
            """
            if not self.receivers or self.sender_receivers_cache.get(sender) is NO_RECEIVERS:
                return []
            # `_look_up`, inline where no edit overlapped (Django 5+'s
            # `_live_receivers` gives (sync, async) itself): this is the path
            # of most of Django's own signals, within a tenth of its send().
            edits, entries = self._edits, self.receivers
            sync_receivers, async_receivers = self._live_receivers(sender)
            if edits & 1 or self._edits != edits:
                edits, entries, sync_receivers, async_receivers = self._look_up(sender)
            responses: Responses = []
            connections = None  # made once a connect() or disconnect() happened
            for index, receiver in enumerate(sync_receivers):
                if self._edits != edits:
                    connections = connections or Connections(self, sender, edits, entries)
                    if not connections.still_connected(index, False):
                        continue
                response = receiver(signal=self, sender=sender, **named)
                if response is not None and inspect.isawaitable(response):
                    raise _awaitable_from_sync_receiver(receiver, response)
                responses.append((receiver, response))
            if async_receivers:
                connections = connections or Connections(self, sender, edits, entries)
                dispatch = Dispatch(self, sender, named, robust=False, connections=connections)
                responses += dispatch.run_from_sync(async_receivers)
            return responses

    def send_robust(self, sender: Any, **named: Any) -> Responses:
        """Like `send`, but a receiver's Exception becomes its response."""
        if not self.receivers or self.sender_receivers_cache.get(sender) is NO_RECEIVERS:
            return []
        edits, entries, sync_receivers, async_receivers = self._look_up(sender)
        responses: Responses = []
        connections = None  # made once a connect() or disconnect() happened
        for index, receiver in enumerate(sync_receivers):
            if self._edits != edits:
                connections = connections or Connections(self, sender, edits, entries)
                if not connections.still_connected(index, False):
                    continue
            try:
                response = receiver(signal=self, sender=sender, **named)
                if response is not None and inspect.isawaitable(response):
                    raise _awaitable_from_sync_receiver(receiver, response)
            # A sync receiver's CancelledError is its own: nothing cancels it.
            except (Exception, asyncio.CancelledError) as err:  # noqa: BLE001 -- answered
                _log_failure(receiver, err)
                responses.append((receiver, err))
            else:
                responses.append((receiver, response))
        if async_receivers:
            connections = connections or Connections(self, sender, edits, entries)
            dispatch = Dispatch(self, sender, named, robust=True, connections=connections)
            responses += dispatch.run_from_sync(async_receivers)
        return responses

    async def asend(self, sender: Any, **named: Any) -> Responses:
        """Send the signal from async code; sync receivers run via sync_to_async.

        Returns [(receiver, response), ...]: sync receivers first, then async
        ones, each in connection order. One error is raised as itself, several
        as a BaseExceptionGroup.
        """
        return await self._asend(sender, named, robust=False)

    async def asend_robust(self, sender: Any, **named: Any) -> Responses:
        """Like `asend`, but a receiver's Exception becomes its response."""
        return await self._asend(sender, named, robust=True)

    def _asend(
        self, sender: Any, named: dict[str, Any], *, robust: bool
    ) -> Coroutine[Any, Any, Responses]:
        # Picks the coroutine that dispatches, for asend to await: one
        # coroutine less to go through.
        if not self.receivers or self.sender_receivers_cache.get(sender) is NO_RECEIVERS:
            return _no_responses()
        edits, entries, sync_receivers, async_receivers = self._look_up(sender)
        connections = Connections(self, sender, edits, entries)
        dispatch = Dispatch(self, sender, named, robust=robust, connections=connections)
        return dispatch.run_from_async(sync_receivers, async_receivers)


async def _no_responses() -> Responses:
    return []


def _sync_response(receiver: Callable[..., Any], response: Any) -> Any:
    """`response`, unless it is an awaitable a sync receiver returned by mistake."""
    if response is not None and inspect.isawaitable(response):
        raise _awaitable_from_sync_receiver(receiver, response)
    return response


def _calls_async(receiver: Callable[..., Any]) -> bool:
    """An object whose __call__ is `async def`, which iscoroutinefunction misses."""
    return (
        not inspect.isroutine(receiver)
        and not iscoroutinefunction(receiver)
        and inspect.iscoroutinefunction(type(receiver).__call__)
    )


def upgrade(
    signal: Signal,
    *,
    context: ContextMode = "shared",
    on_conflict: OnConflict = "raise",
    timeout: float | None = None,
) -> StructuredSignal:
    """Make `signal` structured in place and return it.

    The object, its receivers and its caches stay as they are, so every module
    that imported it (Django's own senders too) dispatches the structured way.
    A subclass of Signal (Django's ModelSignal) keeps its own methods: the
    signal becomes an instance of a subclass of both. A signal that is
    already structured is returned unchanged.
    """
    if isinstance(signal, StructuredSignal):
        return signal
    _check_options(context, on_conflict, timeout)
    signal.__class__ = _structured_class(type(signal))
    assert isinstance(signal, StructuredSignal)
    signal._configure(context, on_conflict, timeout)
    return signal


_DISPATCH_METHODS = ("send", "send_robust", "asend", "asend_robust")
# Invariant: maps a Signal subclass to its structured subclass, made once.
_structured_classes: dict[type[Signal], type[StructuredSignal]] = {Signal: StructuredSignal}


def _structured_class(cls: type[Signal]) -> type[StructuredSignal]:
    structured = _structured_classes.get(cls)
    if structured is not None:
        return structured
    overridden = [
        name
        for name in _DISPATCH_METHODS
        if getattr(cls, name, None) is not getattr(Signal, name, None)
    ]
    if overridden:
        raise TypeError(
            f"{cls.__qualname__} overrides {', '.join(overridden)}, which a structured "
            "signal replaces: make it subclass StructuredSignal instead of upgrading it."
        )
    structured = type(
        f"Structured{cls.__name__}", (StructuredSignal, cls), {"__module__": cls.__module__}
    )
    _structured_classes[cls] = structured
    return structured
