"""Dispatch micro-benchmark: StructuredSignal.asend against Django's own and the floors.

For every cell of the grid (receivers x behaviour x caller variables x
writes) it times, in the same process and event loop, interleaved round by
round to cancel drift:

- `django`: the installed Django's `Signal.asend` (asyncio.gather up to 6.0,
  a TaskGroup with one shared context on 6.1; Django 4.2 has no asend, so
  there it is asyncio.gather over the receivers, which is what 5.x does);
- `gather`: asyncio.gather over the receivers;
- `one by one`: awaiting the receivers one after another (the floor);
- `shared` and `isolated`: StructuredSignal.asend in each context mode.

It prints the medians and the ratio to Django's own, and writes them to
benchmarks/results/dispatch-<python>-django<version>.md with a PNG chart.

The `sync` section times sync `send()` with sync receivers, the path most of
Django's own signals take (model init and save, settings, WSGI requests):
StructuredSignal.send against the installed Django's `Signal.send`, and the
ORM (building instances with pre_init/post_init receivers, `Model.save()`
with pre_save/post_save receivers, in-memory SQLite) with the app's upgrade
of Django's built-in signals applied against without it, switched back and
forth in the same process. Interleaved round by round as well; written to
benchmarks/results/sync-<python>-django<version>.md.

    python benchmarks/dispatch.py [--rounds 15] [--quick] [--section all|async|sync]
        [--sync-rounds 61]
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import gc
import itertools
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import django
from django.conf import settings
from django.dispatch import Signal

from structured_signals import StructuredSignal

RESULTS = Path(__file__).parent / "results"
IMPLEMENTATIONS = ("django", "gather", "one by one", "shared", "isolated")
RECEIVER_COUNTS = (0, 1, 10, 100, 1000)
BEHAVIOURS = ("returns at once", "suspends once")
CALLER_VARIABLES = (0, 50, 1000)
WRITES = ("none", "one each")
# Extra rows: every receiver sets one variable and restores it around an
# await (translation.override, a tracing span), the shared-mode journal's case.
RESTORES = "sets, restores"
RESTORING_CELLS = tuple(
    (receivers, variables) for receivers in (10, 100) for variables in (0, 1000)
)
BATCH_SECONDS = 0.002

Receiver = Callable[..., Awaitable[None]]
Dispatcher = Callable[[], Awaitable[object]]

RECEIVER_VARIABLES = [
    contextvars.ContextVar[int](f"receiver_{i}") for i in range(max(RECEIVER_COUNTS))
]
CALLER_VARIABLE_POOL = [
    contextvars.ContextVar[int](f"caller_{i}") for i in range(max(CALLER_VARIABLES))
]
RESTORED = contextvars.ContextVar[int]("restored")


@dataclass(frozen=True)
class Cell:
    receivers: int
    behaviour: str
    caller_variables: int
    writes: str


def make_receivers(cell: Cell) -> list[Receiver]:
    if cell.writes == RESTORES:
        return [restoring() for _ in range(cell.receivers)]

    def make(index: int) -> Receiver:
        variable = RECEIVER_VARIABLES[index]
        write = cell.writes == "one each"
        suspend = cell.behaviour == "suspends once"

        async def receiver(**kwargs: Any) -> None:
            if suspend:
                await asyncio.sleep(0)
            if write:
                variable.set(index)

        return receiver

    return [make(index) for index in range(cell.receivers)]


def restoring() -> Receiver:
    async def receiver(**kwargs: Any) -> None:
        token = RESTORED.set(1)
        await asyncio.sleep(0)
        RESTORED.reset(token)

    return receiver


def dispatchers(receivers: list[Receiver]) -> dict[str, Dispatcher]:
    djangos = Signal()
    shared = StructuredSignal(context="shared")
    isolated = StructuredSignal(context="isolated")
    for receiver in receivers:
        for signal in (djangos, shared, isolated):
            signal.connect(receiver, weak=False)

    def gather() -> Awaitable[object]:
        return asyncio.gather(*(r(signal=djangos, sender=None) for r in receivers))

    async def one_by_one() -> None:
        for receiver in receivers:
            await receiver(signal=djangos, sender=None)

    django_asend = getattr(djangos, "asend", None)
    return {
        "django": (lambda: django_asend(sender=None)) if django_asend else gather,
        "gather": gather,
        "one by one": one_by_one,
        "shared": lambda: shared.asend(sender=None),
        "isolated": lambda: isolated.asend(sender=None),
    }


async def time_batch(dispatch: Dispatcher, count: int) -> float:
    started = time.perf_counter()
    for _ in range(count):
        await dispatch()
    return (time.perf_counter() - started) / count


async def measure_cell(cell: Cell, rounds: int) -> dict[str, float]:
    """Median seconds per dispatch of each implementation, interleaved by round."""
    for variable in CALLER_VARIABLE_POOL[: cell.caller_variables]:
        variable.set(0)
    candidates = dispatchers(make_receivers(cell))
    counts = {}
    for name, dispatch in candidates.items():
        once = await time_batch(dispatch, 3)
        counts[name] = max(1, int(BATCH_SECONDS / max(once, 1e-7)))
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    names = list(candidates)
    for name in names:
        await time_batch(candidates[name], counts[name])  # warm-up, not counted
    for round_ in range(rounds):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            samples[name].append(await time_batch(candidates[name], counts[name]))
    return {name: statistics.median(values) for name, values in samples.items()}


async def measure_caller_variables(rounds: int) -> dict[str, float]:
    """Per mode: dispatch time with 1000 caller variables / with none, interleaved.

    10 receivers that return at once and write nothing; each batch runs in a
    task of its own whose context holds either every caller variable or none.
    """
    candidates = dispatchers(make_receivers(Cell(10, "returns at once", 0, "none")))
    crowded, empty = contextvars.Context(), contextvars.Context()
    for variable in CALLER_VARIABLE_POOL:
        crowded.run(variable.set, 0)
    count = max(1, int(BATCH_SECONDS / max(await time_batch(candidates["shared"], 3), 1e-7)))
    samples: dict[tuple[str, int], list[float]] = {}
    for _ in range(rounds):
        for mode in ("shared", "isolated"):
            for variables, context in ((1000, crowded), (0, empty)):
                batch = context.run(asyncio.ensure_future, time_batch(candidates[mode], count))
                samples.setdefault((mode, variables), []).append(await batch)
    return {
        mode: statistics.median(samples[(mode, 1000)]) / statistics.median(samples[(mode, 0)])
        for mode in ("shared", "isolated")
    }


def run_cell(cell: Cell, rounds: int) -> dict[str, float]:
    # A new context per cell: the caller's variables of one cell stay out of the next.
    return contextvars.Context().run(asyncio.run, measure_cell(cell, rounds))


def grid(quick: bool) -> list[Cell]:
    counts = (0, 1, 10, 100) if quick else RECEIVER_COUNTS
    return [
        *(
            Cell(*values)
            for values in itertools.product(counts, BEHAVIOURS, CALLER_VARIABLES, WRITES)
        ),
        *(Cell(n, "suspends once", variables, RESTORES) for n, variables in RESTORING_CELLS),
    ]


def microseconds(seconds: float) -> str:
    return f"{seconds * 1e6:,.1f}"


def table(results: list[tuple[Cell, dict[str, float]]]) -> str:
    header = (
        "| receivers | receivers do | caller vars | writes | "
        + " | ".join(f"{name} µs" for name in IMPLEMENTATIONS)
        + " | shared / django | isolated / django |"
    )
    lines = [header, "|" + "---|" * (6 + len(IMPLEMENTATIONS))]
    for cell, medians in results:
        ratios = [medians[mode] / medians["django"] for mode in ("shared", "isolated")]
        lines.append(
            f"| {cell.receivers} | {cell.behaviour} | {cell.caller_variables} | {cell.writes} | "
            + " | ".join(microseconds(medians[name]) for name in IMPLEMENTATIONS)
            + " | "
            + " | ".join(f"{ratio:.2f}" for ratio in ratios)
            + " |"
        )
    return "\n".join(lines)


# The speed goals (issue "Benchmarks against gather ..."): (row, limit, ratio).
def goals(
    results: list[tuple[Cell, dict[str, float]]], variables_ratio: dict[str, float]
) -> list[tuple[str, float, float]]:
    by_cell = dict(results)

    def ratio(mode: str, receivers: int, behaviour: str = "returns at once") -> float:
        medians = by_cell[Cell(receivers, behaviour, 0, "none")]
        return medians[mode] / medians["django"]

    rows = [
        ("no receivers, shared / django", 1.1, ratio("shared", 0)),
        ("1 async receiver, returns at once, shared / django", 0.25, ratio("shared", 1)),
    ]
    for n in (10, 100):
        rows.append((f"{n} receivers, return at once, shared / django", 0.5, ratio("shared", n)))
    for n in (10, 100):
        rows.append(
            (
                f"{n} receivers, suspend once, shared / django",
                1.0,
                ratio("shared", n, "suspends once"),
            )
        )
        rows.append(
            (
                f"{n} receivers, suspend once, isolated / django",
                1.15,
                ratio("isolated", n, "suspends once"),
            )
        )
    for mode in ("shared", "isolated"):
        row = f"10 receivers, nobody writes, 1000 caller vars / 0 vars, {mode}"
        rows.append((row, 1.2, variables_ratio[mode]))
    return rows


def goals_table(rows: list[tuple[str, float, float]]) -> str:
    lines = ["| goal | limit | measured | |", "|---|---|---|---|"]
    for row, limit, measured in rows:
        lines.append(
            f"| {row} | <= {limit} | {measured:.2f} | {'met' if measured <= limit else 'missed'} |"
        )
    return "\n".join(lines)


def chart(results: list[tuple[Cell, dict[str, float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for axis, behaviour in zip(axes, BEHAVIOURS):
        for mode, style in (("shared", "-o"), ("isolated", "--s")):
            for variables in (0, 1000):
                points = [
                    (cell.receivers, medians[mode] / medians["django"])
                    for cell, medians in results
                    if cell.behaviour == behaviour
                    and cell.caller_variables == variables
                    and cell.writes == "none"
                    and cell.receivers > 0
                ]
                if points:
                    xs, ys = zip(*points)
                    axis.plot(xs, ys, style, label=f"{mode}, {variables} caller vars")
        axis.axhline(1.0, color="grey", linewidth=0.8)
        axis.set_xscale("log")
        axis.set_title(f"receivers that: {behaviour}")
        axis.set_xlabel("async receivers")
    axes[0].set_ylabel("StructuredSignal.asend / Django's asend (lower is faster)")
    axes[0].legend(fontsize=8)
    figure.suptitle(f"Python {sys.version.split()[0]}, Django {django.get_version()}")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def run_async_section(rounds: int, quick: bool, stem: str) -> None:
    results = [(cell, run_cell(cell, rounds)) for cell in grid(quick)]
    command = f"python benchmarks/dispatch.py --rounds {rounds}"
    title = (
        f"Dispatch, median µs per dispatch: Python {sys.version.split()[0]}, "
        f"Django {django.get_version()}, `{command}`"
    )
    report = f"{title}\n\n{table(results)}\n"
    if not quick:
        variables_ratio = asyncio.run(measure_caller_variables(rounds))
        report += f"\nSpeed goals:\n\n{goals_table(goals(results, variables_ratio))}\n"
    print(report)
    (RESULTS / f"dispatch-{stem}.md").write_text(report)
    chart(results, RESULTS / f"dispatch-{stem}.png")


# The sync section. Each row: (what, limit, {implementation: (switch, call)}):
# `switch` runs before each of the implementation's batches, `call` is timed.
SyncCall = Callable[[], object]
SyncRow = tuple[str, float, dict[str, tuple[SyncCall, SyncCall]]]
SYNC_BATCH_SECONDS = 0.002
# At least this many calls a batch: a save() takes a few hundred µs.
SYNC_BATCH_CALLS = 50
SYNC_RECEIVER_COUNTS = (1, 5, 20)
written_by_sync: contextvars.ContextVar[int] = contextvars.ContextVar("written_by_sync")


def no_switch() -> None:
    return None


def sync_send_rows() -> list[SyncRow]:
    """Sync send() to sync receivers: StructuredSignal (shared) against Django's Signal."""

    def quiet() -> Callable[..., None]:
        def receiver(**kwargs: Any) -> None:
            return None

        return receiver  # a new function each: Django connects one only once

    def writes(**kwargs: Any) -> None:
        written_by_sync.set(1)

    def pair(receivers: list[Callable[..., None]]) -> dict[str, tuple[SyncCall, SyncCall]]:
        djangos, ours = Signal(), StructuredSignal()
        for receiver in receivers:
            djangos.connect(receiver, weak=False)
            ours.connect(receiver, weak=False)
        assert len(djangos.receivers) == len(ours.receivers) == len(receivers)
        return {
            "django": (no_switch, partial(djangos.send, sender=None)),
            "structured": (no_switch, partial(ours.send, sender=None)),
        }

    rows: list[SyncRow] = [
        (
            f"send(), {n} sync receiver{'s' * (n > 1)} writing nothing",
            1.10,
            pair([quiet() for _ in range(n)]),
        )
        for n in SYNC_RECEIVER_COUNTS
    ]
    rows.append(("send(), 1 sync receiver writing a ContextVar", 1.20, pair([writes])))
    return rows


def orm_rows() -> list[SyncRow]:
    """The ORM with the app's upgrade of Django's signals applied, and without."""
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.db.models import signals

    from structured_signals._integration import upgrade_signals

    call_command("migrate", run_syncdb=True, verbosity=0)

    def quiet(**kwargs: Any) -> None:
        return None

    for signal in (signals.pre_init, signals.post_init, signals.pre_save, signals.post_save):
        signal.connect(quiet, sender=User, weak=False)
    saved = User.objects.create(username="saved")
    # The app upgrades Django's signals in place; switching their class back
    # and forth, batch by batch, compares the two in one process.
    before = {id(signal): type(signal) for signal in live_signals()}
    upgrade_signals()
    switched = [
        (signal, before[id(signal)], type(signal))
        for signal in live_signals()
        if type(signal) is not before.get(id(signal), type(signal))
    ]

    def switch(applied: bool) -> SyncCall:
        def switch_to() -> None:
            for signal, djangos, structured in switched:
                signal.__class__ = structured if applied else djangos

        return switch_to

    def build() -> object:
        return User(username="built", email="built@example.com")

    return [
        (what, 1.05, {"django": (switch(False), call), "structured": (switch(True), call)})
        for what, call in (
            ("ORM: build a User (1 pre_init, 1 post_init receiver)", build),
            ("ORM: User.save() (1 pre_save, 1 post_save receiver)", saved.save),
        )
    ]


def live_signals() -> list[Signal]:
    # By type: isinstance() would set up any Django LazyObject it meets.
    return [obj for obj in gc.get_objects() if issubclass(type(obj), Signal)]


def time_sync_batch(switch_and_call: tuple[SyncCall, SyncCall], count: int) -> float:
    """CPU seconds per call, as timeit takes them: the garbage collector off.

    CPU time: the time other processes take the CPU is not counted.
    """
    switch, call = switch_and_call
    switch()
    gc.collect()
    gc.disable()
    try:
        started = time.thread_time()
        for _ in range(count):
            call()
        return (time.thread_time() - started) / count
    finally:
        gc.enable()


def measure_sync_row(
    calls: dict[str, tuple[SyncCall, SyncCall]], rounds: int
) -> tuple[float, float, float]:
    """Django's and our median seconds per call, and the median of the rounds'
    ratios (each round times both, one right after the other, in turn first)."""
    counts = {
        name: max(SYNC_BATCH_CALLS, int(SYNC_BATCH_SECONDS / max(time_sync_batch(call, 20), 1e-8)))
        for name, call in calls.items()
    }
    for name, call in calls.items():
        time_sync_batch(call, counts[name])  # warm-up, not counted
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for round_ in range(rounds):
        order = ["django", "structured"] if round_ % 2 else ["structured", "django"]
        for name in order:
            samples[name].append(time_sync_batch(calls[name], counts[name]))
    ratios = [ours / djangos for ours, djangos in zip(samples["structured"], samples["django"])]
    return (
        statistics.median(samples["django"]),
        statistics.median(samples["structured"]),
        statistics.median(ratios),
    )


def run_sync_section(rounds: int, stem: str) -> None:
    lines = [
        "| sync | Django µs | structured µs | ratio | limit | |",
        "|---|---|---|---|---|---|",
    ]
    # The ORM rows switch Django's signals: measured last, left upgraded.
    for what, limit, calls in [*sync_send_rows(), *orm_rows()]:
        djangos, ours, ratio = contextvars.Context().run(measure_sync_row, calls, rounds)
        lines.append(
            f"| {what} | {microseconds(djangos)} | {microseconds(ours)} | {ratio:.2f} | "
            f"<= {limit} | {'met' if ratio <= limit else 'missed'} |"
        )
    command = f"python benchmarks/dispatch.py --section sync --sync-rounds {rounds}"
    title = (
        f"Sync send(), median µs of thread CPU time per call, ratio: median of the "
        f"rounds' ratios: Python {sys.version.split()[0]}, Django {django.get_version()}, "
        f"`{command}`; the ORM rows: Django's built-in signals as they are (Django) and "
        "upgraded by the app (structured)"
    )
    report = f"{title}\n\n" + "\n".join(lines) + "\n"
    print(report)
    (RESULTS / f"sync-{stem}.md").write_text(report)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="skip the 1000-receiver cells")
    parser.add_argument("--section", choices=("all", "async", "sync"), default="all")
    parser.add_argument(
        "--sync-rounds", type=int, default=61, help="rounds of each row of the sync section"
    )
    arguments = parser.parse_args()
    if not settings.configured:
        settings.configure(
            INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth"],
            DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        )
        django.setup()
    RESULTS.mkdir(exist_ok=True)
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    stem = f"{python}-django{django.VERSION[0]}.{django.VERSION[1]}"
    if arguments.section in ("all", "async"):
        run_async_section(arguments.rounds, arguments.quick, stem)
    if arguments.section in ("all", "sync"):
        run_sync_section(arguments.sync_rounds, stem)
    return 0


if __name__ == "__main__":
    sys.exit(main())
