"""The compatibility layer, against the installed Django and asgiref."""

from __future__ import annotations

import contextvars
from typing import Any

from asgiref.local import Local
from asgiref.sync import SyncToAsync
from django.dispatch import Signal
from hypothesis import given, settings
from hypothesis import strategies as st
from support import in_plain_thread

from structured_signals._compat import (
    ASGIREF_VARIABLES,
    asgiref_carrier,
    live_receivers,
    local_attributes,
    local_storage,
    mapping_of,
    rehomed,
    shares_values,
    unshared_items,
)

state = Local()
plain: contextvars.ContextVar[object] = contextvars.ContextVar("plain")


def local_variable_and_value(**attributes: object) -> tuple[contextvars.ContextVar[Any], object]:
    context = contextvars.Context()
    for name, value in attributes.items():
        context.run(setattr, state, name, value)
    ((variable, value),) = context.items()
    return variable, value


def test_live_receivers_splits_sync_and_async_receivers_each_in_connection_order() -> None:
    signal = Signal()

    def sync_one(**kwargs: Any) -> None:
        pass

    async def async_one(**kwargs: Any) -> None:
        pass

    def sync_two(**kwargs: Any) -> None:
        pass

    async def async_two(**kwargs: Any) -> None:
        pass

    for receiver in (sync_one, async_one, sync_two, async_two):
        signal.connect(receiver)
    assert live_receivers(signal, None) == ([sync_one, sync_two], [async_one, async_two])


def test_local_attributes_reads_the_installed_asgirefs_local_storage() -> None:
    variable, value = local_variable_and_value(user=1, tenant="acme")
    assert dict(local_attributes(variable, value) or {}) == {"user": 1, "tenant": "acme"}


def test_local_attributes_is_none_for_a_plain_variable() -> None:
    assert local_attributes(plain, {"user": 1}) is None


def test_local_storage_builds_what_local_reads_back() -> None:
    variable, _ = local_variable_and_value(user=1)
    context = contextvars.Context()
    context.run(variable.set, local_storage({"user": 2, "tenant": "acme"}))
    assert context.run(lambda: (state.user, state.tenant)) == (2, "acme")


def test_rehomed_makes_a_local_set_in_another_thread_readable_here() -> None:
    def set_in_other_thread() -> contextvars.Context:
        state.user = "from other thread"
        return contextvars.copy_context()

    foreign = in_plain_thread(set_in_other_thread)
    before = dict(foreign)
    moved = rehomed(foreign)
    assert moved.run(lambda: state.user) == "from other thread"
    assert all(foreign[variable] is value for variable, value in before.items())


def test_rehomed_gives_the_context_itself_when_nothing_has_to_move() -> None:
    state.user = "here"
    context = contextvars.copy_context()
    assert rehomed(context) is context


def test_asgiref_carrier_holds_asgirefs_variables_and_nothing_else() -> None:
    def scenario() -> contextvars.Context:
        plain.set("user data")
        SyncToAsync.deadlock_context.set(True)
        return asgiref_carrier()

    carrier = contextvars.Context().run(scenario)
    assert set(carrier.keys()) == {SyncToAsync.deadlock_context}
    assert set(carrier.keys()) <= ASGIREF_VARIABLES


def test_asgiref_variables_include_the_thread_selecting_ones() -> None:
    assert SyncToAsync.thread_sensitive_context in ASGIREF_VARIABLES
    assert SyncToAsync.deadlock_context in ASGIREF_VARIABLES


POOL = [contextvars.ContextVar[object](f"pool{i}") for i in range(1500)]
# A ContextVar among the values: a node lists values beside their keys.
VALUES = [*(object() for _ in range(7)), contextvars.ContextVar[object]("a value")]
UNSET = object()


def context_holding(assignments: dict[int, int]) -> contextvars.Context:
    context = contextvars.Context()
    for index, value in assignments.items():
        context.run(POOL[index].set, VALUES[value])
    return context


def changed_by_walking(
    before: contextvars.Context, after: contextvars.Context
) -> dict[contextvars.ContextVar[object], object]:
    return {v: value for v, value in after.items() if before.get(v, UNSET) is not value}


def changed_by_unshared_items(
    before: contextvars.Context, after: contextvars.Context
) -> dict[contextvars.ContextVar[object], object]:
    old, new = unshared_items(before, after)
    return {v: value for v, value in new.items() if old.get(v, UNSET) is not value}


indexes = st.integers(min_value=0, max_value=len(POOL) - 1)
values = st.integers(min_value=0, max_value=len(VALUES) - 1)


@settings(deadline=None, max_examples=300)
@given(
    crowd=st.integers(min_value=0, max_value=1200),
    base=st.dictionaries(indexes, values, max_size=50),
    writes=st.lists(st.tuples(indexes, values), max_size=40),
)
def test_unshared_items_find_exactly_the_variables_a_copy_changed(
    crowd: int, base: dict[int, int], writes: list[tuple[int, int]]
) -> None:
    # `crowd` variables make the context large enough for its nodes to be walked.
    before = context_holding({**dict.fromkeys(range(crowd), 0), **base})
    after = before.copy()
    for index, value in writes:
        after.run(POOL[index].set, VALUES[value])
    assert changed_by_unshared_items(before, after) == changed_by_walking(before, after)


def test_unshared_items_read_only_the_path_to_one_write_in_a_crowded_context() -> None:
    before = context_holding(dict.fromkeys(range(1000), 0))
    after = before.copy()
    after.run(POOL[7].set, "written")
    old, new = unshared_items(before, after)
    assert new[POOL[7]] == "written"
    assert old[POOL[7]] is VALUES[0]
    # The leaf node the variable sits in, not the thousand variables.
    assert len(new) < 20


def test_unshared_items_of_a_context_being_run_still_hold_its_changes() -> None:
    before = context_holding(dict.fromkeys(range(300), 0))
    after = before.copy()

    def inside() -> dict[contextvars.ContextVar[object], object]:
        POOL[3].set(VALUES[1])
        return changed_by_unshared_items(before, after)

    assert after.run(inside) == {POOL[3]: VALUES[1]}


def test_shares_values_recognises_an_unwritten_copy_and_nothing_else() -> None:
    before = context_holding(dict.fromkeys(range(100), 0))
    copy = before.copy()
    assert shares_values(before, copy)
    copy.run(POOL[5].set, VALUES[0])  # the same value: still a write
    assert not shares_values(before, copy)
    assert not shares_values(before, context_holding(dict.fromkeys(range(100), 0)))


def test_mapping_of_a_context_changes_when_it_is_written_entered_or_not() -> None:
    context = context_holding(dict.fromkeys(range(10), 0))
    before = mapping_of(context)

    def inside() -> tuple[bool, bool]:
        unwritten = mapping_of(context) is before
        POOL[2].set(VALUES[1])
        return unwritten, mapping_of(context) is before

    outer = contextvars.Context()
    # Entered from another entered context, as a task's step is.
    assert outer.run(context.run, inside) == (True, False)
    assert mapping_of(context) is not before
    assert mapping_of(context) is mapping_of(context)
