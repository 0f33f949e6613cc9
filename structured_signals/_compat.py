"""Everything that differs between Django, Python and asgiref versions.

No other module of the package tests a version: they ask this one.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import sys
import threading
import weakref
from collections.abc import Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any

import django
from asgiref import local as asgiref_local
from asgiref.sync import AsyncToSync, SyncToAsync
from asgiref.sync import iscoroutinefunction as asgiref_iscoroutinefunction

if sys.version_info >= (3, 11):
    from asyncio import TaskGroup, timeout_at
    from builtins import BaseExceptionGroup
else:
    from exceptiongroup import BaseExceptionGroup
    from taskgroup import TaskGroup, timeout_at

if sys.version_info >= (3, 12):

    class EagerTaskGroup(asyncio.TaskGroup):
        """An asyncio.TaskGroup whose tasks start eagerly (Python 3.12+).

        A receiver that finishes without suspending then costs no trip
        through the event loop, as with asyncio.eager_task_factory. A loop
        with a task factory of its own keeps it. This reaches into the
        group's internals as its own create_task does (unchanged 3.12-3.13).
        """

        def create_task(
            self,
            coro: Coroutine[Any, Any, Any],
            *,
            name: str | None = None,
            context: contextvars.Context | None = None,
        ) -> asyncio.Task[Any]:
            loop = self._loop
            usable = self._entered and not self._aborting and not self._exiting  # type: ignore[attr-defined]
            if loop is None or not usable or loop.get_task_factory() is not None:
                return super().create_task(coro, name=name, context=context)
            task = asyncio.Task(coro, loop=loop, name=name, context=context, eager_start=True)
            if task.done():
                # The group's bookkeeping is only for a task that failed.
                if task.cancelled() or task.exception() is not None:
                    self._on_task_done(task)
            else:
                self._tasks.add(task)
                task.add_done_callback(self._on_task_done)
            return task

else:
    EagerTaskGroup = TaskGroup

if TYPE_CHECKING:
    from django.core.handlers.asgi import ASGIHandler
    from django.dispatch import Signal
    from django.http import HttpRequest, HttpResponseBase

__all__ = (
    "ASGIREF_VARIABLES",
    "SENDS_FROM_A_COMPREHENSION",
    "BaseExceptionGroup",
    "EagerTaskGroup",
    "TaskGroup",
    "asgiref_carrier",
    "counts_cancellations",
    "is_connected",
    "listen_for_disconnect",
    "live_receivers",
    "local_attributes",
    "local_storage",
    "rehomed",
    "run_get_response",
    "script_prefix",
    "shares_values",
    "timeout_at",
    "unshared_items",
)

Receiver = Callable[..., Any]

# Django 5.0 added async receivers: `_live_receivers` returns (sync, async)
# from then on; 4.2 returns one list and never awaits anything. 5.0 also
# split ASGIHandler.handle() into the pieces the structured handler reuses.
_DJANGO_5 = django.VERSION >= (5, 0)

# Django 4.2's send() calls its receivers inside a list comprehension: a frame
# of its own below Python 3.12 (PEP 709 inlines them), which warnings raised by
# receivers count (django.test.signals.complex_setting_changed: "stacklevel=5
# if PY312 else 6"). 5.0+ call them from a for loop in send() itself.
SENDS_FROM_A_COMPREHENSION = not _DJANGO_5


def live_receivers(signal: Signal, sender: Any) -> tuple[list[Receiver], list[Receiver]]:
    """The live receivers for `sender`, as (sync, async), each in connection order."""
    if _DJANGO_5:
        sync_receivers, async_receivers = signal._live_receivers(sender)
        return sync_receivers, async_receivers
    receivers: list[Receiver] = signal._live_receivers(sender)  # type: ignore[assignment]
    return (
        [r for r in receivers if not asgiref_iscoroutinefunction(r)],
        [r for r in receivers if asgiref_iscoroutinefunction(r)],
    )


if sys.version_info >= (3, 11):

    def counts_cancellations() -> bool:
        """Whether the current task counts the cancellations requested of it.

        Every task does from Python 3.11 (`Task.cancelling()`).
        """
        return True

else:

    def counts_cancellations() -> bool:
        """Whether the current task counts the cancellations requested of it.

        Below Python 3.11 only the taskgroup backport's tasks do.
        """
        return hasattr(asyncio.current_task(), "cancelling")


def shares_values(before: contextvars.Context, after: contextvars.Context) -> bool:
    """True when `after` certainly holds exactly `before`'s values.

    A copied Context shares CPython's immutable mapping with its original
    until a variable is set in it, so an unwritten copy is recognised in O(1)
    without looking at (or comparing) a single value. False means "maybe
    changed": look. (gc.get_referents shows a Context's mapping, plus its
    parent while it is entered: then this answers False.)
    """
    before_parts, after_parts = gc.get_referents(before), gc.get_referents(after)
    return len(before_parts) == len(after_parts) == 1 and before_parts[0] is after_parts[0]


# The node types of CPython's HAMT (Python/hamt.c), the immutable mapping of a
# Context, by name: they are not exposed anywhere else.
_HAMT_NODES = frozenset({"hamt_bitmap_node", "hamt_array_node", "hamt_collision_node"})
Items = dict[contextvars.ContextVar[Any], Any]
# Measured: below about this many variables, comparing every value is faster
# than walking the nodes.
_READ_WHOLE_UP_TO = 64


class _Unreadable(Exception):
    """A mapping node that does not look like CPython's."""


def unshared_items(
    before: contextvars.Context, after: contextvars.Context
) -> tuple[Mapping[contextvars.ContextVar[Any], Any], Mapping[contextvars.ContextVar[Any], Any]]:
    """Each context's items outside the mapping nodes the two share.

    A copied Context shares CPython's HAMT with its original, and setting a
    variable in the copy replaces only the nodes on the path to it: every
    variable missing from both results has the same value in both contexts.
    Walking the two trees side by side costs O(writes x depth), not
    O(variables). A small context (reading it whole is cheaper), or one whose
    mapping cannot be read so (another Python, an entered context), is
    answered with the contexts themselves.
    """
    if len(after) <= _READ_WHOLE_UP_TO:
        return before, after
    before_root, after_root = _hamt_root(before), _hamt_root(after)
    if before_root is not None and after_root is not None:
        old: Items = {}
        new: Items = {}
        try:
            _collect_unshared(before_root, after_root, old, new)
        except _Unreadable:
            pass
        else:
            return old, new
    return before, after


def _hamt_root(context: contextvars.Context) -> object | None:
    parts = gc.get_referents(context)
    if len(parts) != 1:
        return None
    roots = gc.get_referents(parts[0])
    if len(roots) != 1 or type(roots[0]).__name__ not in _HAMT_NODES:
        return None
    root: object = roots[0]
    return root


def _collect_unshared(before: object, after: object, old: Items, new: Items) -> None:
    """Add the items of two HAMT nodes, minus the subtrees both share, to `old`, `new`.

    Right for any pairing of the children: a subtree skipped is one object
    in both trees, so its variables have one value in both; every other
    variable of either tree is added, with its value there.
    """
    if before is after:
        return
    before_items, before_nodes = _node_entries(before)
    after_items, after_nodes = _node_entries(after)
    old.update(before_items)
    new.update(after_items)
    # A node lists its children in slot order: where a write replaced
    # children, the others stay where they were, and each pair left is the
    # path to a write. Where a child was added, the unshared ones are paired
    # in order: a wrong pair shares nothing and is read whole, never wrongly.
    if len(before_nodes) == len(after_nodes):
        pairs = [pair for pair in zip(before_nodes, after_nodes) if pair[0] is not pair[1]]
        unpaired: list[tuple[object, Items]] = []
    else:
        after_ids, before_ids = set(map(id, after_nodes)), set(map(id, before_nodes))
        only_before = [node for node in before_nodes if id(node) not in after_ids]
        only_after = [node for node in after_nodes if id(node) not in before_ids]
        pairs = list(zip(only_before, only_after))
        unpaired = [(node, old) for node in only_before[len(pairs) :]]
        unpaired += [(node, new) for node in only_after[len(pairs) :]]
    for before_node, after_node in pairs:
        _collect_unshared(before_node, after_node, old, new)
    for node, items in unpaired:
        _collect_all(node, items)


def _collect_all(node: object, items: Items) -> None:
    node_items, children = _node_entries(node)
    items.update(node_items)
    for child in children:
        _collect_all(child, items)


def _node_entries(node: object) -> tuple[Items, list[object]]:
    """A HAMT node's own (variable, value) items, and its child nodes."""
    referents = gc.get_referents(node)
    if type(node) is _ARRAY_NODE:
        return {}, referents  # it holds child nodes only
    items: Items = {}
    children: list[object] = []
    # CPython visits a node's slots last to first: a value comes just before
    # its key, a child node alone. Read backwards, keys tell values apart.
    position = len(referents) - 1
    while position >= 0:
        entry = referents[position]
        if type(entry) is contextvars.ContextVar and position > 0:
            items[entry] = referents[position - 1]
            position -= 2
        elif type(entry).__name__ in _HAMT_NODES:
            children.append(entry)
            position -= 1
        else:
            raise _Unreadable(entry)
    return items, children


def _array_node_type() -> type | None:
    """The type of a HAMT node holding only children (one of over 16)."""
    crowded = contextvars.Context()
    variables = [contextvars.ContextVar[int](f"probe{i}") for i in range(64)]
    crowded.run(_set_values, [(variable, 0) for variable in variables])
    root = _hamt_root(crowded)
    return type(root) if type(root).__name__ == "hamt_array_node" else None


def is_connected(signal: Signal, receiver: Receiver) -> bool:
    """Whether `receiver` is still among `signal`'s receivers."""
    # Every Django keeps (lookup_key, receiver or weak reference, ...) tuples.
    with signal.lock:
        for entry in signal.receivers:
            target = entry[1]
            if isinstance(target, weakref.ReferenceType):
                target = target()
            if target is receiver:
                return True
    return False


# asgiref.local.Local keeps every attribute of one Local in ONE ContextVar.
# 3.9.1-3.11 store a dict copied on write; 3.12+ wrap it in a `_Storage` tagged
# with the thread that owns it, invisible from any other thread until it is
# re-homed. (3.8 mutated one dict in place, so tasks could not be isolated at
# all; 3.9.0 used a ContextVar per attribute: the floor is 3.9.1.)
_Storage: Any = getattr(asgiref_local, "_Storage", None)
_LOCAL_VARIABLE_NAME = "asgiref.local"


def local_attributes(
    variable: contextvars.ContextVar[Any], value: object
) -> Mapping[str, Any] | None:
    """The attributes held by `value` if it is a Local's storage, else None."""
    if _Storage is not None:
        return value.data if isinstance(value, _Storage) else None
    if variable.name == _LOCAL_VARIABLE_NAME and isinstance(value, dict):
        return value
    return None


def local_storage(attributes: dict[str, Any]) -> object:
    """A Local's storage holding `attributes`, owned by the current thread."""
    if _Storage is not None:
        return _Storage(threading.get_ident(), attributes)
    return attributes


def rehomed(context: contextvars.Context) -> contextvars.Context:
    """`context`, with every Local storage in it handed to the current thread.

    asgiref does the same when it moves a context between threads; without it
    a Local set on one side of a thread hop reads as empty on the other. Gives
    `context` itself when nothing has to move, else a copy: never mutates it.
    """
    if _Storage is None:
        return context
    thread_id = threading.get_ident()
    moved = [
        (variable, value.data)
        for variable, value in context.items()
        if isinstance(value, _Storage) and value.thread_id != thread_id
    ]
    if not moved:
        return context
    copy = context.copy()
    copy.run(_set_values, [(variable, _Storage(thread_id, data)) for variable, data in moved])
    return copy


def _asgiref_variables() -> frozenset[contextvars.ContextVar[Any]]:
    variables = {
        value
        for owner in (SyncToAsync, AsyncToSync)
        for value in vars(owner).values()
        if isinstance(value, contextvars.ContextVar)
    }
    # AsyncToSync.executors is a Local: its storage variable sits one level down.
    variables.add(AsyncToSync.executors._storage._data)
    return frozenset(variables)


# Invariant: these are asgiref's own bookkeeping (which thread runs sync code),
# never request state; the merge leaves them where asgiref put them.
ASGIREF_VARIABLES = _asgiref_variables()


def asgiref_carrier() -> contextvars.Context:
    """A new context holding only asgiref's variables, as they are now.

    Run sync_to_async/async_to_sync inside it, never in the caller's context:
    asgiref before 3.13 copies the whole context across the thread hop and
    back comparing every value with `!=`, which raises for a numpy array.
    asgiref's variables choose the thread (Django's per-request thread), so
    they must come along.
    """
    current = contextvars.copy_context()
    carrier = contextvars.Context()
    carrier.run(_set_values, [(v, current[v]) for v in ASGIREF_VARIABLES if v in current])
    return carrier


def _set_values(values: list[tuple[contextvars.ContextVar[Any], Any]]) -> None:
    for variable, value in values:
        variable.set(value)


_ARRAY_NODE = _array_node_type()


# Django's ASGIHandler is imported lazily: importing it creates Django's
# built-in signals, which must not happen when this package is imported.


def script_prefix(handler: ASGIHandler, scope: dict[str, Any]) -> str:
    """The script prefix of `scope`, as the installed Django computes it."""
    if _DJANGO_5:
        from django.core.handlers.asgi import get_script_prefix

        return get_script_prefix(scope)
    prefix: str = handler.get_script_prefix(scope)  # type: ignore[attr-defined]
    return prefix


async def run_get_response(handler: ASGIHandler, request: HttpRequest) -> HttpResponseBase:
    """The response of the middleware chain and the view, as Django's handler makes it."""
    if _DJANGO_5:
        return await handler.run_get_response(request)
    from django.http import FileResponse

    response = await handler.get_response_async(request)
    response._handler_class = type(handler)  # type: ignore[attr-defined]
    if isinstance(response, FileResponse):
        response.block_size = handler.chunk_size
    return response


async def listen_for_disconnect(handler: ASGIHandler, receive: Callable[[], Any]) -> None:
    """Return never; raise RequestAborted when the client disconnects."""
    if _DJANGO_5:
        await handler.listen_for_disconnect(receive)
        return
    from django.core.exceptions import RequestAborted

    message = await receive()
    if message["type"] == "http.disconnect":
        raise RequestAborted
    raise AssertionError(f"Invalid ASGI message after request body: {message['type']}")
