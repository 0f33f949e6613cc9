"""Memory soak: many dispatches with writes, in both context modes.

After a warm-up, traced memory may grow by less than 1 MiB, and no Context,
Task or receiver coroutine of a dispatch may be alive once it returned.

    python benchmarks/memory.py [--dispatches 1000000]

`nox -s soak` runs it with a million dispatches per mode; the test suite runs
a short version (tests/test_dispatch.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import gc
import sys
import tracemalloc
import types
from dataclasses import dataclass
from typing import Any

import django
from asgiref.local import Local
from django.conf import settings

from structured_signals import StructuredSignal

LIMIT = 1024 * 1024
WARM_UP = 2_000

user: contextvars.ContextVar[int] = contextvars.ContextVar("user")
request_state = Local()


async def set_user(n: int, **kwargs: Any) -> None:
    user.set(n)


async def set_tenant(n: int, **kwargs: Any) -> None:
    await asyncio.sleep(0)
    request_state.tenant = n


RECEIVER_CODES = {set_user.__code__, set_tenant.__code__}


@dataclass(frozen=True)
class Report:
    mode: str
    dispatches: int
    grown_bytes: int
    contexts_left: int
    tasks_left: int
    receiver_frames_left: int

    @property
    def ok(self) -> bool:
        left = self.contexts_left + self.tasks_left + self.receiver_frames_left
        return self.grown_bytes < LIMIT and left == 0


def live(kind: type) -> list[object]:
    # By type, not isinstance() (nor asyncio.iscoroutine(), which calls it):
    # that reads a Django LazyObject's __class__, which sets it up
    # (staticfiles_storage raises without STATIC_URL).
    return [obj for obj in gc.get_objects() if issubclass(type(obj), kind)]


def receiver_frames() -> int:
    return sum(
        1
        for obj in gc.get_objects()
        if type(obj) is types.CoroutineType and obj.cr_code in RECEIVER_CODES
    )


def measure(dispatches: int, mode: str) -> Report:
    """Dispatch `dispatches` times after a warm-up; what grew and what stayed alive."""
    signal = StructuredSignal(context=mode)  # type: ignore[arg-type]
    signal.connect(set_user)
    signal.connect(set_tenant)

    async def soak() -> Report:
        for n in range(WARM_UP):
            await signal.asend(sender=None, n=n)
        gc.collect()
        contexts = len(live(contextvars.Context))
        tasks = len(live(asyncio.Task))
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for n in range(dispatches):
            await signal.asend(sender=None, n=n)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        return Report(
            mode=mode,
            dispatches=dispatches,
            grown_bytes=grown,
            contexts_left=max(0, len(live(contextvars.Context)) - contexts),
            tasks_left=max(0, len(live(asyncio.Task)) - tasks),
            receiver_frames_left=receiver_frames(),
        )

    return asyncio.run(soak())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dispatches", type=int, default=1_000_000)
    arguments = parser.parse_args()
    if not settings.configured:
        settings.configure()
        django.setup()
    print(f"Python {sys.version.split()[0]}, Django {django.get_version()}")
    print(
        "| mode | dispatches | memory grown | Contexts left | Tasks left | receiver frames left |"
    )
    print("|---|---|---|---|---|---|")
    reports = [measure(arguments.dispatches, mode) for mode in ("shared", "isolated")]
    for r in reports:
        print(
            f"| {r.mode} | {r.dispatches:,} | {r.grown_bytes / 1024:.1f} KiB | "
            f"{r.contexts_left} | {r.tasks_left} | {r.receiver_frames_left} |"
        )
    return 0 if all(r.ok for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
