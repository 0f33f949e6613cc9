"""The context engine: what receivers changed, and a three-way merge of it.

A dispatch snapshots the caller's context (the base), lets receivers write in
copies of it, and at the end merges into the caller only what the receivers
CHANGED. A change is a value that is not the base value *by identity*; a
value's own `==` is consulted only to decide whether two writers agree, and
an `==` that raises or returns a non-bool (a numpy array) means "different".
`asgiref.local.Local` keeps all its attributes in one ContextVar, so the
engine diffs and merges it attribute by attribute.
"""

from __future__ import annotations

import contextvars
import reprlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, NamedTuple, Union

from structured_signals._compat import (
    ASGIREF_VARIABLES,
    local_attributes,
    local_storage,
    shares_values,
    unshared_items,
    visible_local_attributes,
)

__all__ = (
    "MISSING",
    "Conflict",
    "ContextConflictError",
    "OnConflict",
    "Writer",
    "apply",
    "merge",
    "merge_into_current",
)


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final[Any] = _Missing()
"""The value of a variable or Local attribute that is not set."""

Variable = contextvars.ContextVar[Any]
# A ContextVar, or one attribute of the Local whose storage is that ContextVar.
Key = Union[Variable, tuple[Variable, str]]


@dataclass(frozen=True)
class Conflict:
    """One variable (or Local attribute) changed by several writers that disagree."""

    variable: Variable
    attribute: str | None
    """The Local attribute, or None when `variable` is a plain ContextVar."""
    base: object
    """The value before the dispatch, `MISSING` when it was not set."""
    writers: tuple[tuple[str, object], ...]
    """(writer, value) in order: "caller" first, then receivers in connection order."""

    @property
    def name(self) -> str:
        if self.attribute is None:
            return self.variable.name
        return f"Local attribute {self.attribute!r}"

    def __str__(self) -> str:
        written = ", ".join(f"{writer} set {reprlib.repr(value)}" for writer, value in self.writers)
        return f"{self.name} (was {reprlib.repr(self.base)}): {written}"


class ContextConflictError(RuntimeError):
    """Several writers changed the same context variable to different values."""

    def __init__(self, conflicts: Sequence[Conflict]) -> None:
        self.conflicts = tuple(conflicts)
        super().__init__(
            f"{len(self.conflicts)} context variable(s) changed by more than one "
            f"writer: {'; '.join(map(str, self.conflicts))}. Nothing was merged into the "
            "caller's context. Make the receivers write different variables, or "
            "construct the signal with on_conflict='first', 'last' or a callable "
            "that picks the value to keep."
        )


# Stands for the sync receiver that wrote a key until a conflict needs its name.
_SYNC_WRITER: Final = object()
_CALLER: Final = "caller"

OnConflict = Union[Literal["raise", "first", "last"], Callable[[Conflict], object]]


class Writer(NamedTuple):
    """Receivers that ran in `context`, forked from the dispatch's contexts.

    `describe` gives their name; it is called only to report a conflict.
    `changed`, when given, is what they hand the merge instead of their
    context's changes (a shared-mode receiver's net effects, from the write
    journal). (A NamedTuple: a dispatch makes one per receiver that wrote.)
    """

    describe: Callable[[], str]
    context: contextvars.Context
    changed: Mapping[Key, object] | None = None


def merge(
    *,
    base: contextvars.Context,
    caller: contextvars.Context,
    sync_writers: Sequence[Writer],
    async_base: contextvars.Context,
    async_writers: Sequence[Writer],
    on_conflict: OnConflict,
) -> dict[Key, object]:
    """What to write into the caller so that it gets the receivers' changes.

    `sync_writers` ran one after another, each from the previous one's
    context (the first from `base`); the last one's context is where the async
    writers started (`async_base`, possibly re-homed to another thread). Async
    writers ran side by side, so two of them changing a key is a conflict
    unless they agree; so is the caller having changed a key meanwhile.
    Raises ContextConflictError, before anything is written, when
    `on_conflict` is "raise" and there is a conflict.
    """
    sync_end = sync_writers[-1].context if sync_writers else base
    sync_changes = changes(base, sync_end)
    async_changes = [
        changes(async_base, writer.context) if writer.changed is None else writer.changed
        for writer in async_writers
    ]
    caller_wrote = not shares_values(base, caller)
    if len(async_changes) <= 1 and not caller_wrote:
        # The caller wrote nothing meanwhile and no two writers ran side by
        # side: nothing can conflict (the common case, taken in one pass).
        return _layered(base, sync_changes, async_changes[0] if async_changes else {})

    # Each key's async writers in connection order, gathered in one pass.
    async_written: dict[Key, list[tuple[object, object]]] = {}
    for writer, changed in zip(async_writers, async_changes):
        for key, value in changed.items():
            async_written.setdefault(key, []).append((writer, value))
    result: dict[Key, object] = {}
    conflicts: list[Conflict] = []
    for key in _union(sync_changes, async_written):
        writers = async_written.get(key) or [(_SYNC_WRITER, sync_changes[key])]
        base_value = read(base, key)
        caller_value = read(caller, key) if caller_wrote else base_value
        if caller_value is not base_value:
            writers = [(_CALLER, caller_value), *writers]
        if (
            len(writers) == 1
            or on_conflict == "first"
            or all(_agree(writers[0][1], value) for _, value in writers[1:])
        ):
            chosen = writers[0]
        elif on_conflict == "last":
            chosen = writers[-1]
        else:
            named = [(_name(writer, base, sync_writers, key), value) for writer, value in writers]
            conflict = _conflict(key, base_value, named)
            if on_conflict == "raise":
                conflicts.append(conflict)
                continue
            chosen = (None, on_conflict(conflict))
        if chosen[1] is caller_value:
            continue
        if chosen[1] is MISSING and not isinstance(key, tuple):
            raise _cannot_unset(key, on_conflict)
        result[key] = chosen[1]
    if conflicts:
        raise ContextConflictError(conflicts)
    return result


def _cannot_unset(variable: Variable, on_conflict: OnConflict) -> ValueError:
    """The error for a merge that would have to unset a ContextVar in the caller.

    A ContextVar set in the caller can only be reset by its own token: a
    policy's answer of MISSING (unset), or a receiver's unsetting one (a reset
    of a sibling's token) chosen over the caller's write, cannot be applied.
    """
    if callable(on_conflict):
        policy = getattr(on_conflict, "__qualname__", None) or repr(on_conflict)
        return ValueError(
            f"on_conflict={policy} returned MISSING for the ContextVar {variable.name!r}, "
            "which cannot be unset: return the value to keep (one of conflict.writers' "
            "values, for instance). Only a Local attribute can be deleted by returning "
            "MISSING. Nothing was merged."
        )
    return ValueError(
        f"on_conflict={on_conflict!r} chose to unset the ContextVar {variable.name!r}, which "
        "a receiver reset to unset while the caller set it: a ContextVar cannot be unset "
        "in the caller. Use on_conflict='first' or a callable returning the value to keep. "
        "Nothing was merged."
    )


def merge_into_current(
    *,
    base: contextvars.Context,
    sync_writers: Sequence[Writer],
    async_base: contextvars.Context,
    async_writers: Sequence[Writer],
    on_conflict: OnConflict,
) -> None:
    """`merge` against the current context as the caller, and `apply` the result."""
    changed = merge(
        base=base,
        caller=contextvars.copy_context(),
        sync_writers=sync_writers,
        async_base=async_base,
        async_writers=async_writers,
        on_conflict=on_conflict,
    )
    apply(changed)


def _layered(
    base: contextvars.Context,
    sync_changes: Mapping[Key, object],
    async_changes: Mapping[Key, object],
) -> dict[Key, object]:
    """The sync receivers' changes with the async ones' on top: they saw them."""
    result = dict(sync_changes)
    for key, value in async_changes.items():
        if key in result and value is read(base, key):
            del result[key]  # put back as it was before the dispatch
        else:
            result[key] = value
    return result


def apply(changed: Mapping[Key, object]) -> None:
    """Write `changed` into the current context, Local attributes included."""
    locals_: dict[Variable, dict[str, Any]] = {}
    for key, value in changed.items():
        if not isinstance(key, tuple):
            key.set(value)
            continue
        variable, attribute = key
        attributes = locals_.get(variable)
        if attributes is None:
            # As setting an attribute does: what this thread sees, and no more.
            attributes = dict(visible_local_attributes(variable, variable.get(MISSING)) or {})
            locals_[variable] = attributes
        if value is MISSING:
            attributes.pop(attribute, None)
        else:
            attributes[attribute] = value
    for variable, attributes in locals_.items():
        variable.set(local_storage(attributes))


def changes(before: contextvars.Context, after: contextvars.Context) -> dict[Key, object]:
    """Every key whose value in `after` is not the one in `before`."""
    changed: dict[Key, object] = {}
    if before is after or shares_values(before, after):
        return changed
    old_items, new_items = unshared_items(before, after)
    for variable, value in new_items.items():
        old = old_items.get(variable, MISSING)
        if value is old or variable in ASGIREF_VARIABLES:
            continue
        attributes = local_attributes(variable, value)
        if attributes is None:
            changed[variable] = value
            continue
        old_attributes = local_attributes(variable, old) or {}
        for attribute, new_value in attributes.items():
            if new_value is not old_attributes.get(attribute, MISSING):
                changed[(variable, attribute)] = new_value
        for attribute in old_attributes:
            if attribute not in attributes:
                changed[(variable, attribute)] = MISSING
    # Unset again (a token reset to before the variable's first set): only
    # between steps of one context, never in a fork from its base.
    for variable, old in old_items.items():
        if variable in new_items or variable in after or variable in ASGIREF_VARIABLES:
            continue
        attributes = local_attributes(variable, old)
        if attributes is None:
            changed[variable] = MISSING
        else:
            changed.update(((variable, attribute), MISSING) for attribute in attributes)
    return changed


def read(context: contextvars.Context, key: Key) -> object:
    """The value of `key` in `context`, `MISSING` when unset."""
    if not isinstance(key, tuple):
        return context.get(key, MISSING)
    variable, attribute = key
    attributes = local_attributes(variable, context.get(variable, MISSING))
    return MISSING if attributes is None else attributes.get(attribute, MISSING)


def _agree(left: object, right: object) -> bool:
    if left is right:
        return True
    try:
        equal = left == right
    except Exception:  # noqa: BLE001 -- a user's failing __eq__ means "different"
        return False
    return isinstance(equal, bool) and equal


def _union(*mappings: Mapping[Key, object]) -> Iterable[Key]:
    return dict.fromkeys(key for mapping in mappings for key in mapping)


def _name(
    writer: object, base: contextvars.Context, sync_writers: Sequence[Writer], key: Key
) -> str:
    if writer is _SYNC_WRITER:
        return _last_sync_writer(base, sync_writers, key)
    return writer.describe() if isinstance(writer, Writer) else str(writer)


def _last_sync_writer(base: contextvars.Context, writers: Sequence[Writer], key: Key) -> str:
    """The sync receiver whose write to `key` the others saw last."""
    previous = [base, *(writer.context for writer in writers)]
    for writer, before in zip(reversed(writers), reversed(previous[:-1])):
        if read(writer.context, key) is not read(before, key):
            return writer.describe()
    raise AssertionError(f"no sync receiver changed {key!r}")


def _conflict(key: Key, base: object, writers: Sequence[tuple[str, object]]) -> Conflict:
    if isinstance(key, tuple):
        return Conflict(key[0], key[1], base, tuple(writers))
    return Conflict(key, None, base, tuple(writers))
