"""The context engine: diff by identity, three-way merge, conflicts, Local attributes."""

from __future__ import annotations

import contextvars
from functools import partial
from typing import Any

import pytest
from asgiref.local import Local
from asgiref.sync import SyncToAsync
from support import Bomb, in_plain_thread

from structured_signals import MISSING, Conflict, ContextConflictError
from structured_signals._context import Writer, apply, changes, merge, read

color: contextvars.ContextVar[object] = contextvars.ContextVar("color")
size: contextvars.ContextVar[object] = contextvars.ContextVar("size")
state = Local()


def context_with(**values: object) -> contextvars.Context:
    """A new context holding `values` (names of the module's variables)."""
    return then(contextvars.Context(), **values)


def then(context: contextvars.Context, **values: object) -> contextvars.Context:
    """A copy of `context` with `values` set on top."""
    following = context.copy()
    variables = {"color": color, "size": size}
    for name, value in values.items():
        following.run(variables[name].set, value)
    return following


def with_local(context: contextvars.Context, **attributes: object) -> contextvars.Context:
    following = context.copy()
    for name, value in attributes.items():
        following.run(setattr, state, name, value)
    return following


def merge_isolated(
    base: contextvars.Context,
    *writers: contextvars.Context,
    caller: contextvars.Context | None = None,
    on_conflict: Any = "raise",
) -> dict[Any, object]:
    return merge(
        base=base,
        caller=base if caller is None else caller,
        sync_writers=[],
        async_base=base,
        async_writers=[Writer(partial(str, f"receiver{i}"), w) for i, w in enumerate(writers)],
        on_conflict=on_conflict,
    )


def test_changes_reports_values_that_are_not_the_base_object() -> None:
    red = ["red"]
    base = context_with(color=red, size=1)
    after = then(base, color=["red"], size=base[size])
    assert changes(base, after) == {color: ["red"]}


def test_changes_reports_new_variables() -> None:
    base = context_with()
    assert changes(base, then(base, size=3)) == {size: 3}


def test_changes_ignores_asgiref_bookkeeping_variables() -> None:
    base = context_with()
    after = base.copy()
    after.run(SyncToAsync.deadlock_context.set, True)
    assert changes(base, after) == {}


def test_changes_diffs_a_local_attribute_by_attribute() -> None:
    base = with_local(context_with(), user=1, tenant="acme")
    after = with_local(base, tenant="other", locale="fr")
    changed = {key[1]: value for key, value in changes(base, after).items()}  # type: ignore[index]
    assert changed == {"tenant": "other", "locale": "fr"}


def test_changes_reports_a_deleted_local_attribute_as_missing() -> None:
    base = with_local(context_with(), user=1)
    after = base.copy()
    after.run(delattr, state, "user")
    assert list(changes(base, after).values()) == [MISSING]


@pytest.mark.parametrize("variables", [0, 100])
def test_changes_reports_a_variable_unset_again_by_a_token_reset_as_missing(
    variables: int,
) -> None:
    # Between two steps of one context (the shared-mode journal), not a fork.
    many = [contextvars.ContextVar[int](f"filler{index}") for index in range(variables)]
    base = contextvars.Context()
    for variable in many:
        base.run(variable.set, 0)
    token = base.run(color.set, "red")
    before = base.copy()
    base.run(color.reset, token)
    assert changes(before, base.copy()) == {color: MISSING}


def test_changes_reports_every_attribute_of_a_local_unset_again_as_missing() -> None:
    base = contextvars.Context()
    storage = next(iter(with_local(base, user=1, tenant="acme").keys()))
    token = base.run(storage.set, with_local(base, user=1, tenant="acme")[storage])
    before = base.copy()
    base.run(storage.reset, token)
    assert changes(before, base.copy()) == {
        (storage, "user"): MISSING,
        (storage, "tenant"): MISSING,
    }


def test_merge_takes_a_writers_given_changes_instead_of_its_contexts() -> None:
    base = context_with()
    journaled = Writer(partial(str, "receiver"), then(base, color="ignored"), {size: 2})
    merged = merge(
        base=base,
        caller=base,
        sync_writers=[],
        async_base=base,
        async_writers=[journaled],
        on_conflict="raise",
    )
    assert merged == {size: 2}


def test_merge_refuses_to_unset_a_variable_the_caller_set_when_last_picks_an_unset() -> None:
    # A receiver reset a sibling's token (the variable is unset again, as at
    # the base) while the caller set it: "last" picks the unset, which a
    # ContextVar of the caller cannot take. Never the MISSING sentinel as a value.
    base = context_with()
    unsetter = Writer(partial(str, "receiver"), base.copy(), {color: MISSING})
    with pytest.raises(ValueError, match="cannot be unset in the caller"):
        merge(
            base=base,
            caller=then(base, color="caller's"),
            sync_writers=[],
            async_base=base,
            async_writers=[unsetter],
            on_conflict="last",
        )


def test_merge_writes_nothing_when_no_receiver_changed_anything() -> None:
    base = context_with(color=Bomb())
    assert merge_isolated(base, base.copy(), base.copy()) == {}


def test_merge_takes_disjoint_changes_of_every_writer() -> None:
    base = context_with()
    assert merge_isolated(base, then(base, color="red"), then(base, size=2)) == {
        color: "red",
        size: 2,
    }


def test_merge_equal_values_from_two_writers_are_no_conflict() -> None:
    base = context_with()
    merged = merge_isolated(base, then(base, color=["red"]), then(base, color=["red"]))
    assert merged == {color: ["red"]}


@pytest.mark.parametrize("value", [Bomb(), float("nan")])
def test_merge_values_whose_equality_raises_or_is_false_conflict(value: object) -> None:
    base = context_with()
    with pytest.raises(ContextConflictError):
        merge_isolated(base, then(base, color=value), then(base, color=Bomb()))


def test_merge_an_equality_returning_a_non_bool_counts_as_different() -> None:
    class Elementwise:
        def __eq__(self, other: object) -> Any:
            return [True, True]

        __hash__ = object.__hash__

    base = context_with()
    with pytest.raises(ContextConflictError):
        merge_isolated(base, then(base, color=Elementwise()), then(base, color=Elementwise()))


def test_merge_leaves_a_variable_only_the_caller_changed() -> None:
    base = context_with(color="red")
    caller = then(base, color="blue")
    assert merge_isolated(base, base.copy(), caller=caller) == {}


def test_merge_counts_the_caller_as_the_first_writer() -> None:
    base = context_with(color="red")
    caller = then(base, color="blue")
    with pytest.raises(ContextConflictError) as raised:
        merge_isolated(base, then(base, color="green"), caller=caller)
    (conflict,) = raised.value.conflicts
    assert conflict.writers == (("caller", "blue"), ("receiver0", "green"))
    assert conflict.base == "red"
    assert merge_isolated(base, then(base, color="green"), caller=caller, on_conflict="first") == {}


def test_merge_first_and_last_pick_by_writer_order() -> None:
    base = context_with()
    writers = then(base, color="a"), then(base, color="b"), then(base, color="c")
    assert merge_isolated(base, *writers, on_conflict="first") == {color: "a"}
    assert merge_isolated(base, *writers, on_conflict="last") == {color: "c"}


def test_merge_a_callable_policy_gets_the_conflict_and_picks_the_value() -> None:
    base = context_with(color="base")
    seen: list[Conflict] = []

    def policy(conflict: Conflict) -> object:
        seen.append(conflict)
        return "chosen"

    merged = merge_isolated(base, then(base, color="a"), then(base, color="b"), on_conflict=policy)
    assert merged == {color: "chosen"}
    assert [(c.variable, c.attribute, c.base, c.writers) for c in seen] == [
        (color, None, "base", (("receiver0", "a"), ("receiver1", "b")))
    ]


def test_merge_raises_once_naming_every_conflict_and_how_to_fix_it() -> None:
    base = context_with()
    one = then(base, color="a", size=1)
    other = then(base, color="b", size=2)
    with pytest.raises(ContextConflictError) as raised:
        merge_isolated(base, one, other)
    assert {c.variable for c in raised.value.conflicts} == {color, size}
    message = str(raised.value)
    assert "color (was MISSING): receiver0 set 'a', receiver1 set 'b'" in message
    assert "size (was MISSING): receiver0 set 1, receiver1 set 2" in message
    assert "on_conflict='first', 'last' or a callable" in message
    assert isinstance(raised.value, RuntimeError)


def test_merge_sync_writers_are_sequential_and_named_when_they_conflict_with_the_caller() -> None:
    base = context_with(color="base")
    first = then(base, color="from first")
    second = then(first, size=2)
    caller = then(base, color="from caller")
    with pytest.raises(ContextConflictError) as raised:
        merge(
            base=base,
            caller=caller,
            sync_writers=[
                Writer(partial(str, "first"), first),
                Writer(partial(str, "second"), second),
            ],
            async_base=second,
            async_writers=[],
            on_conflict="raise",
        )
    (conflict,) = raised.value.conflicts
    assert conflict.writers == (("caller", "from caller"), ("first", "from first"))


def test_merge_an_async_write_after_a_sync_write_is_no_conflict() -> None:
    base = context_with()
    synced = then(base, color="sync")
    merged = merge(
        base=base,
        caller=base,
        sync_writers=[Writer(partial(str, "sync"), synced)],
        async_base=synced,
        async_writers=[
            Writer(partial(str, "one"), then(synced, color="async")),
            Writer(partial(str, "two"), synced.copy()),
        ],
        on_conflict="raise",
    )
    assert merged == {color: "async"}


def test_apply_writes_variables_and_local_attributes_into_the_current_context() -> None:
    def scenario() -> tuple[object, object, object, bool]:
        state.kept = "kept"
        state.dropped = "dropped"
        apply(
            {color: "red", (state_variable(), "added"): 1, (state_variable(), "dropped"): MISSING}
        )
        return color.get(), state.kept, state.added, hasattr(state, "dropped")

    assert contextvars.Context().run(scenario) == ("red", "kept", 1, False)


def test_apply_shows_a_thread_no_local_attribute_it_could_not_see_before() -> None:
    # A thread running in a context it inherited (Python 3.14's
    # thread_inherit_context, or ctx.run in a thread) does not see the Local
    # attributes another thread set there (asgiref 3.12+ tags them with their
    # thread; older asgirefs show them everywhere): a merge that adds an
    # attribute must not reveal them, as setting one there does not.
    def scenario() -> tuple[object, object]:
        state.secret = "another thread's"
        inherited = contextvars.copy_context()

        def in_thread() -> tuple[object, object]:
            before = getattr(state, "secret", None)
            apply({(state_variable(), "added"): 1})
            assert state.added == 1
            return before, getattr(state, "secret", None)

        return in_plain_thread(partial(inherited.run, in_thread))

    before, after = contextvars.Context().run(scenario)
    assert after == before


def test_read_gives_missing_for_unset_variables_and_attributes() -> None:
    base = with_local(context_with(), user=1)
    assert read(base, color) is MISSING
    assert read(base, (state_variable(), "tenant")) is MISSING
    assert read(base, (state_variable(), "user")) == 1


def test_missing_shows_as_missing() -> None:
    assert repr(MISSING) == "MISSING"


def state_variable() -> contextvars.ContextVar[Any]:
    """The ContextVar in which `state` keeps its attributes."""
    context = contextvars.Context()
    context.run(setattr, state, "probe", 1)
    (variable,) = context.keys()
    return variable
