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
from itertools import compress, count
from operator import is_not
from typing import TYPE_CHECKING, Any

import django
from asgiref import local as asgiref_local
from asgiref.sync import AsyncToSync, SyncToAsync
from asgiref.sync import iscoroutinefunction as asgiref_iscoroutinefunction
from django.dispatch.dispatcher import NONE_ID, _make_id  # type: ignore[attr-defined]

if sys.version_info >= (3, 11):
    from asyncio import TaskGroup, timeout_at
    from builtins import BaseExceptionGroup
else:
    from exceptiongroup import BaseExceptionGroup
    from taskgroup import TaskGroup, timeout_at

if sys.version_info >= (3, 14):
    # Loop types whose create_task takes no `eager_start` (uvloop before 0.23).
    _NO_EAGER_START: set[type[asyncio.AbstractEventLoop]] = set()

    class EagerTaskGroup(asyncio.TaskGroup):
        """An asyncio.TaskGroup whose tasks start eagerly, through the public API.

        Each task runs up to its first suspension inside create_task, as
        with asyncio.eager_task_factory. TaskGroup.create_task(eager_start=
        True) (3.14+, gh-128307) keeps all of the group's own bookkeeping:
        the record of the group's task as each child's awaiter
        (asyncio.capture_call_graph(), `python -m asyncio pstree`), made once
        the child's first step returns (during that step a child shows no
        awaiter yet, as any eager task in a TaskGroup), and the done callback
        even of a child that finished in that step (gh-128550), which the
        group's end waits for: one trip through the event loop that
        3.12-3.13's copy below does not make.

        A loop with a task factory keeps it and its choice: from 3.14 the
        loop hands `eager_start` on to the factory, and a factory written
        for an older Python refuses it (TypeError). So does the create_task
        of a loop that predates the argument (uvloop before 0.23): its tasks
        start the usual way.
        """

        def create_task(self, coro: Coroutine[Any, Any, Any], **kwargs: Any) -> asyncio.Task[Any]:
            loop = asyncio.get_running_loop()
            if loop.get_task_factory() is None and type(loop) not in _NO_EAGER_START:
                try:
                    return super().create_task(coro, eager_start=True, **kwargs)
                except TypeError as error:
                    # Raised before any task exists: `coro` has not started.
                    if "eager_start" not in str(error):
                        raise
                    _NO_EAGER_START.add(type(loop))
            return super().create_task(coro, **kwargs)

elif sys.version_info >= (3, 12):

    class _EagerTaskGroupFromInternals(asyncio.TaskGroup):
        """An asyncio.TaskGroup whose tasks start eagerly, on Python 3.12 and 3.13.

        These have no public way to start one task of a group eagerly, so
        this is a copy of their TaskGroup.create_task (unchanged 3.12-3.13)
        that reaches into the group's private attributes to start the task
        with asyncio.Task(eager_start=True). 3.14 has the public API
        (EagerTaskGroup above): drop this with 3.13.

        A receiver that finishes without suspending then costs no trip
        through the event loop, as with asyncio.eager_task_factory. A loop
        with a task factory of its own keeps it.
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

    EagerTaskGroup = _EagerTaskGroupFromInternals

else:
    EagerTaskGroup = TaskGroup

if sys.version_info >= (3, 13):
    ReceiverTaskGroup = EagerTaskGroup
elif sys.version_info >= (3, 11):

    class ReceiverTaskGroup(EagerTaskGroup):
        """EagerTaskGroup that leaves its parent task's cancel count as it found it.

        CPython 3.11 and 3.12 cancel the parent when a child fails while
        `__aexit__` waits, and never take that request back (3.13 does, at
        the end of `__aexit__`): each failed group would leave the caller's
        `Task.cancelling()` one higher.
        """

        async def __aexit__(self, et: Any, exc: Any, tb: Any) -> None:
            # A request made before __aexit__ is taken back by __aexit__ itself.
            requested = self._parent_cancel_requested
            try:
                await super().__aexit__(et, exc, tb)
            finally:
                if self._parent_cancel_requested and not requested:
                    self._parent_task.uncancel()

else:
    # The taskgroup backport takes its request back, as 3.13 does.
    ReceiverTaskGroup = EagerTaskGroup


def cancels_its_tasks(group: TaskGroup) -> bool:
    """Whether `group` has begun cancelling its tasks (a task failed, or its parent is cancelled).

    Every TaskGroup (3.11-3.15, the backport) sets `_aborting` before it
    cancels the first one, and never clears it.
    """
    aborting: bool = group._aborting  # type: ignore[attr-defined]
    return aborting


if TYPE_CHECKING:
    from django.core.handlers.asgi import ASGIHandler
    from django.dispatch import Signal
    from django.http import HttpRequest, HttpResponseBase

__all__ = (
    "ASGIREF_VARIABLES",
    "DEADLOCK_FLAG",
    "SENDS_FROM_A_COMPREHENSION",
    "BaseExceptionGroup",
    "EagerTaskGroup",
    "ReceiverTaskGroup",
    "TaskGroup",
    "asgiref_carrier",
    "cancels_its_tasks",
    "listen_for_disconnect",
    "live_keys",
    "live_receivers",
    "local_attributes",
    "local_storage",
    "mapping_of",
    "maybe_written",
    "rehomed",
    "run_get_response",
    "script_prefix",
    "shares_values",
    "still_connected",
    "timeout_at",
    "unshared_items",
    "visible_local_attributes",
    "with_asgiref_of_current",
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


def shares_values(before: contextvars.Context, after: contextvars.Context) -> bool:
    """True when `after` certainly holds exactly `before`'s values.

    A copied Context shares CPython's immutable mapping with its original
    until a variable is set in it, so an unwritten copy is recognised in O(1)
    without looking at (or comparing) a single value. False means "maybe
    changed": look. (gc.get_referents shows a Context's mapping, plus its
    parent while it is entered: then this answers False.)
    """
    # One call for both: each Context shows at least its mapping, so two
    # parts are one each.
    parts = gc.get_referents(before, after)
    return len(parts) == 2 and parts[0] is parts[1]


def maybe_written(base: contextvars.Context, copies: list[contextvars.Context]) -> list[bool]:
    """For each of `copies` of `base`: False when it certainly holds exactly `base`'s values.

    `shares_values` for many copies at once, in one call.
    """
    parts = gc.get_referents(base, *copies)
    if len(parts) == len(copies) + 1:
        # Each Context showed its mapping alone: none of them is entered.
        return [part is not parts[0] for part in parts[1:]]
    return [not shares_values(base, copy) for copy in copies]


def mapping_of(context: contextvars.Context) -> object:
    """What `context` holds now, as an object that changes when it is written.

    CPython's immutable mapping (a HAMT), entered or not: setting a variable
    replaces it, so that an unwritten context is recognised in O(1) without
    a copy. Another Python gets a new object each time: "maybe changed".
    """
    parts = gc.get_referents(context)
    # Entered, a Context shows the one it was entered from too, first.
    if parts and type(parts[-1]) is _HAMT:
        return parts[-1]
    return object()


# The node types of CPython's HAMT (Python/hamt.c), the immutable mapping of a
# Context, by name: they are not exposed anywhere else.
_HAMT_NODES = frozenset({"hamt_bitmap_node", "hamt_array_node", "hamt_collision_node"})
Items = dict[contextvars.ContextVar[Any], Any]
# Measured (Python 3.12, reading only the slots that differ): below about this
# many variables, comparing every value is faster than walking the nodes.
_READ_WHOLE_UP_TO = 32


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
    if before is after or _collect_changed_slots(before, after, old, new):
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


def _collect_changed_slots(before: object, after: object, old: Items, new: Items) -> bool:
    """`_collect_unshared` for two nodes of one shape, reading only the slots that differ.

    A write that replaced a value or a child leaves every other slot the
    same object: the differing slots are found without a Python loop over
    the node (each step of a shared-mode receiver that wrote is diffed so).
    False, having added nothing, when the nodes differ in shape.
    """
    if type(before) is not type(after):
        return False
    before_entries, after_entries = gc.get_referents(before), gc.get_referents(after)
    if len(before_entries) != len(after_entries):
        return False
    values: list[tuple[contextvars.ContextVar[Any], object, object]] = []
    children: list[tuple[object, object]] = []
    last = len(after_entries) - 1
    for position in compress(count(), map(is_not, before_entries, after_entries)):
        old_entry, new_entry = before_entries[position], after_entries[position]
        old_is_node = type(old_entry).__name__ in _HAMT_NODES
        if old_is_node and type(new_entry).__name__ in _HAMT_NODES:
            children.append((old_entry, new_entry))
            continue
        # A value comes just before its key (see _node_entries); a key is
        # always a ContextVar, so an entry that is not one is a value.
        key = after_entries[position + 1] if position < last else None
        if (
            old_is_node
            or type(new_entry).__name__ in _HAMT_NODES
            or type(old_entry) is contextvars.ContextVar
            or type(new_entry) is contextvars.ContextVar
            or type(key) is not contextvars.ContextVar
            or before_entries[position + 1] is not key
        ):
            return False
        values.append((key, old_entry, new_entry))
    for key, old_value, new_value in values:
        old[key] = old_value
        new[key] = new_value
    for old_child, new_child in children:
        _collect_unshared(old_child, new_child, old, new)
    return True


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


LookupKey = tuple[Any, Any]


def live_keys(
    entries: list[tuple[Any, ...]], sender: Any
) -> tuple[list[LookupKey], list[LookupKey]]:
    """The lookup keys of `live_receivers(signal, sender)`, as (sync, async), in its order.

    `entries` is `signal.receivers` as it was when the receivers were looked
    up: every Django keeps (lookup_key, receiver or weak reference, ...)
    there. The keys stand by position for the receivers `_live_receivers`
    returned, whatever those are: a new bound method for each call of a
    WeakMethod, a wrapper a tracing library put around the receiver.
    """
    sender_key = _make_id(sender)
    sync_keys: list[LookupKey] = []
    async_keys: list[LookupKey] = []
    for entry in entries:
        key, target = entry[0], entry[1]
        if key[1] != NONE_ID and key[1] != sender_key:
            continue
        if isinstance(target, weakref.ReferenceType):
            target = target()
            if target is None:
                continue  # dead: `_live_receivers` skipped it too
        if len(entry) == 4 and entry[2] is not None and entry[2]() is None:
            continue  # Django 5.1+: a weakly referenced sender that died, skipped too
        # Django 5.0+ stores is_async last; 4.2 tells them apart as below.
        is_async = entry[-1] if _DJANGO_5 else asgiref_iscoroutinefunction(target)
        (async_keys if is_async else sync_keys).append(key)
    return sync_keys, async_keys


def still_connected(signal: Signal, key: LookupKey) -> bool:
    """Whether a receiver connected under lookup key `key` still is."""
    with signal.lock:
        return any(entry[0] == key for entry in signal.receivers)


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


def visible_local_attributes(
    variable: contextvars.ContextVar[Any], value: object
) -> Mapping[str, Any] | None:
    """The attributes of `value` that the current thread sees, if it is a Local's storage.

    asgiref 3.12+ hides a storage tagged with another thread (one merely
    inherited with a context): setting an attribute there starts afresh.
    """
    if _Storage is not None and isinstance(value, _Storage):
        return value.data if value.thread_id == threading.get_ident() else {}
    return local_attributes(variable, value)


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

# Invariant: True in a context whose task is in a thread-sensitive
# sync_to_async on asgiref's one shared thread (no ThreadSensitiveContext, no
# async_to_sync above), which makes another such call from that context
# raise "would deadlock". It means "this task", so receivers that share one
# context must each have their own (`_journal.Journal`).
DEADLOCK_FLAG: contextvars.ContextVar[bool] = SyncToAsync.deadlock_context


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


def with_asgiref_of_current(context: contextvars.Context) -> contextvars.Context:
    """A copy of `context` whose asgiref variables are the current context's.

    Async receivers of a sync `send()` run in the task `async_to_sync` made
    for the waiting thread, and their `sync_to_async` calls must find what
    `async_to_sync` set there (`AsyncToSync.executors.current`: run in the
    waiting thread). With the values of the dispatch's caller instead, they
    queue behind the waiting thread in its ThreadSensitiveContext (a hang)
    or hit asgiref's "Single thread executor already being used".
    """
    current = contextvars.copy_context()
    copy = context.copy()
    copy.run(_set_values, [(v, current[v]) for v in ASGIREF_VARIABLES if v in current])
    return copy


def _set_values(values: list[tuple[contextvars.ContextVar[Any], Any]]) -> None:
    for variable, value in values:
        variable.set(value)


_ARRAY_NODE = _array_node_type()
_HAMT = type(gc.get_referents(contextvars.Context())[0])


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
