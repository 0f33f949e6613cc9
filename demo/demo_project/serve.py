"""Serve the project with uvicorn on 127.0.0.1, in a child process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from collections.abc import Iterator

PROJECT_PARENT = Path(__file__).parent.parent


@dataclass(frozen=True)
class Served:
    url: str
    pid: int

    def resident_bytes(self) -> int:
        """The server process's resident memory (Linux)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"no VmRSS for process {self.pid}")


@contextmanager
def uvicorn(handler: str, loop: str = "asyncio") -> Iterator[Served]:
    """Serve `demo_project.asgi_<handler>` with uvicorn on 127.0.0.1, on `loop`.

    The server is stopped (terminated, then killed after 10 s) on exit.
    """
    port = _free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            *("-m", "uvicorn", f"demo_project.asgi_{handler}:application"),
            *("--host", "127.0.0.1", "--port", str(port), "--loop", loop),
            *("--lifespan", "off", "--log-level", "warning", "--backlog", "256"),
            # Longer than any pause of the load generators, so that no
            # keep-alive connection is closed under a request about to reuse it.
            *("--timeout-keep-alive", "60"),
        ],
        cwd=PROJECT_PARENT,
        env={**os.environ, "PYTHONPATH": str(PROJECT_PARENT), "PYTHONWARNINGS": "ignore"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_serving(process, url)
        yield Served(url, process.pid)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _wait_until_serving(process: subprocess.Popen[bytes], url: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"uvicorn exited with {process.returncode}")
        try:
            httpx.get(url + "/events/", timeout=1)
        except httpx.TransportError:
            time.sleep(0.05)
        else:
            return
    raise RuntimeError(f"uvicorn did not serve {url} within 30 s")
