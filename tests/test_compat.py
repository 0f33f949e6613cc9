"""The compatibility layer, against the installed Django and asgiref."""

from __future__ import annotations

import asyncio
import contextvars
import sys
from typing import TYPE_CHECKING, Any

import pytest
from asgiref.local import Local
from asgiref.sync import SyncToAsync
from django.dispatch import Signal
from hypothesis import given, settings
from hypothesis import strategies as st
from support import Runner, in_plain_thread, runner

from structured_signals._compat import (
    ASGIREF_VARIABLES,
    BaseExceptionGroup,
    EagerTaskGroup,
    ReceiverTaskGroup,
    asgiref_carrier,
    live_keys,
    live_receivers,
    local_attributes,
    local_storage,
    mapping_of,
    maybe_written,
    rehomed,
    shares_values,
    still_connected,
    unshared_items,
    with_asgiref_of_current,
)

if TYPE_CHECKING:
    from collections.abc import Coroutine

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


def test_maybe_written_tells_each_copy_as_shares_values_does_one_of_them_entered_too() -> None:
    base = context_holding(dict.fromkeys(range(10), 0))
    unwritten, written, entered = base.copy(), base.copy(), base.copy()
    written.run(POOL[5].set, VALUES[1])
    copies = [unwritten, written, entered, unwritten]
    assert maybe_written(base, copies) == [False, True, False, False]
    assert [not shares_values(base, copy) for copy in copies] == [False, True, False, False]
    # Entered, a Context shows the one it was entered from too: "maybe changed".
    assert entered.run(maybe_written, base, copies) == [False, True, True, False]


async def started_before_create_task_returns() -> tuple[bool, asyncio.Task[Any]]:
    """Whether an EagerTaskGroup's task ran its first step inside create_task."""
    started: list[bool] = []

    async def first_step() -> None:
        started.append(True)

    async with EagerTaskGroup() as group:
        task = group.create_task(first_step())
        eager = bool(started)
    assert started, "the task never ran"
    return eager, task


def test_eager_task_group_starts_each_task_inside_create_task_from_python_3_12(
    run: Runner,
) -> None:
    eager, _ = run(started_before_create_task_returns())
    assert eager == (sys.version_info >= (3, 12))


FACTORY_TASKS: list[asyncio.Task[Any]] = []


def _factory_before_3_14(
    loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any]
) -> asyncio.Task[Any]:
    """A task factory as written before Python 3.14: it takes no `eager_start`."""
    task = asyncio.Task(coro, loop=loop)
    FACTORY_TASKS.append(task)
    return task


def _loop_with_factory_before_3_14() -> asyncio.AbstractEventLoop:
    loop = asyncio.new_event_loop()
    loop.set_task_factory(_factory_before_3_14)
    return loop


def test_eager_task_group_leaves_a_loops_task_factory_to_make_and_start_its_tasks() -> None:
    FACTORY_TASKS.clear()
    eager, task = runner(_loop_with_factory_before_3_14)(started_before_create_task_returns())
    # Below 3.11 the taskgroup backport makes tasks of its own (they count
    # their cancellations) on any loop.
    assert (task in FACTORY_TASKS) == (sys.version_info >= (3, 11))
    assert not eager


class _LoopBeforeEagerStart(asyncio.SelectorEventLoop):
    """A loop whose create_task predates `eager_start`, as uvloop's before 0.23."""

    def create_task(  # type: ignore[override]
        self, coro: Coroutine[Any, Any, Any], *, name: str | None = None
    ) -> asyncio.Task[Any]:
        return super().create_task(coro, name=name)


def test_eager_task_group_runs_its_tasks_on_a_loop_whose_create_task_takes_no_eager_start() -> None:
    run = runner(_LoopBeforeEagerStart)
    for _ in range(2):  # the second time, knowing the loop refuses it
        eager, task = run(started_before_create_task_returns())
        assert task.done()
        # 3.12-3.13's copy of the group's internals makes the task itself;
        # from 3.14 the loop's create_task makes it, the usual way.
        assert eager == ((3, 12) <= sys.version_info < (3, 14))


def test_with_asgiref_of_current_copies_asgirefs_variables_from_the_current_context() -> None:
    def receiver_start() -> contextvars.Context:
        plain.set("the caller's")
        SyncToAsync.deadlock_context.set(False)
        return contextvars.copy_context()

    start = contextvars.Context().run(receiver_start)

    def inside_async_to_sync() -> contextvars.Context:
        plain.set("asgiref's side")
        SyncToAsync.deadlock_context.set(True)
        return with_asgiref_of_current(start)

    carried = contextvars.Context().run(inside_async_to_sync)
    assert carried[SyncToAsync.deadlock_context] is True
    assert carried[plain] == "the caller's"
    assert start[SyncToAsync.deadlock_context] is False


class Sender:
    pass


def test_live_keys_stand_by_position_for_the_live_receivers_each_kind_in_its_own_list() -> None:
    signal = Signal()

    def sync_receiver(**kwargs: Any) -> None:
        pass

    async def async_receiver(**kwargs: Any) -> None:
        pass

    signal.connect(sync_receiver, sender=Sender, weak=False)
    signal.connect(async_receiver, weak=False, dispatch_uid="uid")
    signal.connect(sync_receiver, sender=object, weak=False)
    sync_keys, async_keys = live_keys(signal.receivers.copy(), Sender)
    assert live_receivers(signal, Sender) == ([sync_receiver], [async_receiver])
    assert len(sync_keys) == len(async_keys) == 1
    assert sync_keys[0][1] == id(Sender)
    assert async_keys[0][0] == "uid"
    assert still_connected(signal, sync_keys[0])
    signal.disconnect(sync_receiver, sender=Sender)
    assert not still_connected(signal, sync_keys[0])
    assert still_connected(signal, async_keys[0])


async def fails_soon() -> None:
    await asyncio.sleep(0)
    raise ValueError


async def fail_in_a_group() -> None:
    async with ReceiverTaskGroup() as group:
        group.create_task(fails_soon())
        group.create_task(asyncio.sleep(10))


def test_receiver_task_group_leaves_its_parent_tasks_cancel_requests_as_it_found_them(
    run: Runner,
) -> None:
    async def parent() -> list[int | None]:
        counts: list[int | None] = []
        for _ in range(3):
            with pytest.raises(BaseExceptionGroup):
                await fail_in_a_group()
            await asyncio.sleep(0)  # no stray cancellation either
            cancelling = getattr(asyncio.current_task(), "cancelling", None)
            counts.append(None if cancelling is None else cancelling())
        return counts

    # Below 3.11 a task does not count its cancel requests.
    assert run(parent()) == [0 if sys.version_info >= (3, 11) else None] * 3


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
