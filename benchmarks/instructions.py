"""Instructions per dispatch, counted by valgrind: where the time of an `asend` goes.

Wall-clock ratios on this machine move by a tenth from run to run; an
instruction count is the same each time for the same code and inputs. For
each implementation it runs `--dispatches` dispatches of a signal with N
async receivers under `valgrind --tool=callgrind`, counting only them (the
interpreter's start and Django's setup are left out), and prints the
instructions per dispatch:

- `django`: the installed Django's `Signal.asend` (Django 5.0+);
- `shared`, `isolated`: `StructuredSignal.asend` in each context mode;
- `floor`: what any dispatch that gives every receiver a task of its own in
  a TaskGroup must do (SPEC 3.8): Django's receiver lookup, one eager
  TaskGroup task per receiver, each in a copy of the caller's context,
  running a minimal wrapper that keeps its response; nothing else.

An instruction count leaves out what the kernel does: Django's `asend`
waits for the event loop (a system call) where an eager task does not, so
its wall-clock time is the larger share. Needs valgrind on PATH.

    python benchmarks/instructions.py [--receivers 1 10] [--behaviour once suspend]
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

IMPLEMENTATIONS = ("django", "floor", "shared", "isolated")
# Counting starts as the first of these C functions is entered and is
# written out as the second is: calls nothing else makes in between.
START, STOP = "sys_getswitchinterval", "sys__clear_type_cache"


def count(implementation: str, receivers: int, behaviour: str, dispatches: int) -> int:
    """Instructions per dispatch, from a child process run under callgrind."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "callgrind.out"
        subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                f"--zero-before={START}",
                f"--dump-before={STOP}",
                sys.executable,
                __file__,
                "--child",
                implementation,
                str(receivers),
                behaviour,
                str(dispatches),
            ],
            check=True,
            capture_output=True,
        )
        dumps = [path for path in Path(folder).iterdir() if path.name != out.name]
        (dump,) = dumps
        totals = re.search(r"^(?:summary|totals): (\d+)", dump.read_text(), re.MULTILINE)
        assert totals is not None, f"no totals in {dump}"
        return int(totals.group(1)) // dispatches


def child(implementation: str, receivers: int, behaviour: str, dispatches: int) -> None:
    from django.conf import settings

    settings.configure()
    import django
    from django.dispatch import Signal

    from structured_signals import StructuredSignal
    from structured_signals._compat import ReceiverTaskGroup

    def make() -> Any:
        async def receiver(**kwargs: Any) -> None:
            if behaviour == "suspend":
                await asyncio.sleep(0)

        return receiver

    django.setup()
    connected = [make() for _ in range(receivers)]
    djangos = Signal()
    structured = StructuredSignal(context="isolated" if implementation == "isolated" else "shared")
    for receiver in connected:
        djangos.connect(receiver, weak=False)
        structured.connect(receiver, weak=False)

    async def floor() -> list[tuple[Any, Any]]:
        _, _, _, found = structured._look_up(None)
        caller = contextvars.copy_context()
        responses: list[Any] = [None] * len(found)

        async def respond(index: int, receiver: Any) -> None:
            responses[index] = await receiver(signal=djangos, sender=None)

        async with ReceiverTaskGroup() as group:
            for index, receiver in enumerate(found):
                group.create_task(respond(index, receiver), context=caller.copy())
        return list(zip(found, responses))

    dispatch: Callable[[], Awaitable[object]] = {
        "django": lambda: djangos.asend(sender=None),
        "floor": floor,
        "shared": lambda: structured.asend(sender=None),
        "isolated": lambda: structured.asend(sender=None),
    }[implementation]

    async def main() -> None:
        for _ in range(50):  # warm-up, not counted
            await dispatch()
        sys.getswitchinterval()  # START
        for _ in range(dispatches):
            await dispatch()
        sys._clear_type_cache()  # STOP

    asyncio.run(main())


def main() -> int:
    if sys.argv[1:2] == ["--child"]:
        implementation, receivers, behaviour, dispatches = sys.argv[2:6]
        child(implementation, int(receivers), behaviour, int(dispatches))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--receivers", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--behaviour", nargs="+", choices=("once", "suspend"), default=["once"])
    parser.add_argument("--dispatches", type=int, default=300)
    arguments = parser.parse_args()
    print("| receivers | receivers do | " + " | ".join(IMPLEMENTATIONS) + " |")
    print("|---|---|" + "---|" * len(IMPLEMENTATIONS))
    for behaviour in arguments.behaviour:
        for receivers in arguments.receivers:
            counts = [
                count(name, receivers, behaviour, arguments.dispatches) for name in IMPLEMENTATIONS
            ]
            cells = " | ".join(f"{counted:,} ({counted / counts[0]:.2f})" for counted in counts)
            print(f"| {receivers} | {behaviour} | {cells} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
