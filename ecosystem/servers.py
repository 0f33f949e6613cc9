"""Start an ASGI server with eco_project on 127.0.0.1, in a child process, and stop it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING

from demo_project.serve import _free_port, _wait_until_serving

if TYPE_CHECKING:
    from collections.abc import Iterator

ECOSYSTEM = Path(__file__).parent
DEMO = ECOSYSTEM.parent / "demo"
APPLICATION = "eco_project.asgi:application"
# Each server on each loop it offers (daphne runs on Twisted's asyncio reactor).
SERVERS = [
    ("uvicorn", "asyncio"),
    ("uvicorn", "uvloop"),
    ("hypercorn", "asyncio"),
    ("hypercorn", "uvloop"),
    ("daphne", "asyncio"),
    ("granian", "asyncio"),
    ("granian", "uvloop"),
]
# No agent, no telemetry, nothing sent anywhere: ddtrace keeps spans in memory.
QUIET_DDTRACE = {
    "DD_TRACE_AGENT_URL": "http://127.0.0.1:9",
    "DD_INSTRUMENTATION_TELEMETRY_ENABLED": "false",
    "DD_REMOTE_CONFIGURATION_ENABLED": "false",
    "DD_TRACE_STARTUP_LOGS": "false",
    "DD_CRASHTRACKING_ENABLED": "false",
}


def command(server: str, loop: str, port: int) -> list[str]:
    if server == "uvicorn":
        return [
            *("uvicorn", APPLICATION, "--host", "127.0.0.1", "--port", str(port)),
            *("--loop", loop, "--lifespan", "off", "--log-level", "warning"),
        ]
    if server == "hypercorn":
        return [
            *("hypercorn", APPLICATION, "--bind", f"127.0.0.1:{port}"),
            *("--worker-class", loop, "--log-level", "warning"),
        ]
    if server == "daphne":
        return ["daphne", "-v", "0", "-b", "127.0.0.1", "-p", str(port), APPLICATION]
    # asginl: ASGI without lifespan, which Django's handler refuses.
    return [
        *("granian", "--interface", "asginl", "--host", "127.0.0.1", "--port", str(port)),
        *("--loop", loop, "--no-ws", "--log-level", "warning", APPLICATION),
    ]


@contextmanager
def serve(server: str = "uvicorn", loop: str = "asyncio", **environ: str) -> Iterator[str]:
    """Serve eco_project with `server` on `loop`; its URL. Stopped on exit (10 s, then killed)."""
    port = _free_port()
    executable, *arguments = command(server, loop, port)
    process = subprocess.Popen(
        [sys.executable, "-m", executable, *arguments],
        cwd=ECOSYSTEM,
        env={
            **os.environ,
            **QUIET_DDTRACE,
            "ECO_TOOLBAR": "0",
            **environ,
            "PYTHONPATH": os.pathsep.join([str(ECOSYSTEM), str(DEMO)]),
            "PYTHONWARNINGS": "ignore",
        },
        # Its own process group: granian's workers are stopped with it.
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_serving(process, url)
        yield url
    finally:
        _signal_group(process.pid, signal.SIGTERM)
        try:
            # A server still draining its connections after 10 s is killed:
            # how fast it stops is not what these tests check.
            with suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
        finally:
            # Whatever of the group is left (a worker), and the server if it hung.
            _signal_group(process.pid, signal.SIGKILL)
            process.wait()


def _signal_group(pid: int, number: signal.Signals) -> None:
    with suppress(ProcessLookupError):
        os.killpg(pid, number)
