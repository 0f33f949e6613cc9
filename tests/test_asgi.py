"""StructuredASGIHandler under a real server: uvicorn on 127.0.0.1, real HTTP requests.

The project is tests/e2e_project. Every example runs against the
StructuredASGIHandler (on asyncio's loop and on uvloop) and against Django's
stock ASGIHandler of the installed version, whose behaviour is asserted too,
so the suite itself documents the difference (Django ticket #36714).
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import django
import httpx
import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator

TESTS_DIR = Path(__file__).parent
# Django 6.1 dispatches async receivers in one shared context (#36315) and
# runs the view in the handler's own task; earlier versions do neither.
STOCK_KEEPS_CONTEXT = django.VERSION >= (6, 1)
# Django 4.2's Signal.send() calls an async receiver without awaiting it.
STOCK_AWAITS_ASYNC_RECEIVERS = django.VERSION >= (5, 0)


@dataclass
class Server:
    handler: str
    url: str

    @property
    def structured(self) -> bool:
        return self.handler == "structured"

    def get(self, path: str, request_id: str) -> dict[str, Any]:
        response = httpx.get(self.url + path, headers={"X-Request-Id": request_id}, timeout=10)
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    def events(self) -> dict[str, list[dict[str, Any]]]:
        response = httpx.get(self.url + "/events/", timeout=10)
        events: dict[str, list[dict[str, Any]]] = response.json()
        return events

    def wait_for_events(self, request_id: str, *stages: str) -> dict[str, dict[str, Any]]:
        """The events of `request_id` by stage, once all `stages` happened (10 s at most)."""
        return self.wait_for_all_events([request_id], *stages)[request_id]

    def wait_for_all_events(
        self, request_ids: list[str], *stages: str
    ) -> dict[str, dict[str, dict[str, Any]]]:
        """The events of each request by stage, once all `stages` happened (10 s at most)."""
        deadline = time.monotonic() + 10
        while True:
            events = self.events()
            by_request = {
                request_id: {event["stage"]: event for event in events.get(request_id, [])}
                for request_id in request_ids
            }
            done = all(set(stages) <= by_stage.keys() for by_stage in by_request.values())
            if done or time.monotonic() > deadline:
                return by_request
            time.sleep(0.02)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_until_serving(process: subprocess.Popen[bytes], url: str) -> None:
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


@contextmanager
def uvicorn(handler: str, loop: str) -> Iterator[Server]:
    """uvicorn serving the e2e project on 127.0.0.1 with `handler`, on `loop`."""
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            *("-m", "uvicorn", f"e2e_project.asgi_{handler}:application"),
            *("--host", "127.0.0.1", "--port", str(port), "--loop", loop),
            *("--lifespan", "off", "--log-level", "warning", "--backlog", "256"),
        ],
        cwd=TESTS_DIR,
        env={**os.environ, "PYTHONPATH": str(TESTS_DIR), "PYTHONWARNINGS": "ignore"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(process, url)
        yield Server(handler, url)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(
    scope="module",
    params=[("structured", "asyncio"), ("structured", "uvloop"), ("django", "asyncio")],
    ids=["structured-asyncio", "structured-uvloop", "django-asyncio"],
)
def server(request: pytest.FixtureRequest) -> Iterator[Server]:
    """The StructuredASGIHandler on each loop, and Django's own handler."""
    with uvicorn(*request.param) as running:
        yield running


@pytest.fixture(scope="module", params=["asyncio", "uvloop"])
def structured_server(request: pytest.FixtureRequest) -> Iterator[Server]:
    """The StructuredASGIHandler on each loop."""
    with uvicorn("structured", request.param) as running:
        yield running


@pytest.mark.parametrize("path", ["/whoami/", "/whoami-sync/"])
def test_request_started_writes_reach_the_middleware_and_the_view(
    server: Server, path: str
) -> None:
    request_id = f"started-{server.handler}-{path}"
    seen = server.get(path, request_id)
    middleware = server.wait_for_events(request_id, "middleware")["middleware"]
    # A sync receiver's write came back through sync_to_async in every Django.
    assert seen["request_id"] == middleware["request_id"] == request_id
    # The async receiver's write is the one Django <= 6.0 loses (#36714).
    keeps = server.structured or STOCK_KEEPS_CONTEXT
    expected = request_id if keeps else None
    assert seen["local_id"] == middleware["local_id"] == expected


@pytest.mark.parametrize("path", ["/connection/", "/stream/"])
def test_the_views_writes_reach_request_finished_sync_and_async(server: Server, path: str) -> None:
    request_id = f"finished-{server.handler}-{path}"
    response = httpx.get(server.url + path, headers={"X-Request-Id": request_id}, timeout=10)
    assert response.status_code == 200
    sync, async_ = "request_finished (sync)", "request_finished (async)"
    if server.structured or STOCK_KEEPS_CONTEXT:
        events = server.wait_for_events(request_id, sync, async_)
        for stage in (sync, async_):
            assert events[stage]["connection"] == request_id
            assert events[stage]["request_id"] == request_id
        return
    # Django 5.2 and 6.0 run the view in a task of its own: request_finished
    # sees none of its writes, so it cannot even tell which request finished.
    if STOCK_AWAITS_ASYNC_RECEIVERS:
        unowned = server.wait_for_events("<no id>", sync, async_)
        assert {sync, async_} <= unowned.keys()
        assert request_id not in server.events() or not (
            {sync, async_} & {e["stage"] for e in server.events()[request_id]}
        )
        return
    # Django 4.2 runs the view in the handler's task, so its sync receiver
    # sees the view's writes, but it never awaits an async receiver.
    events = server.wait_for_events(request_id, sync)
    assert events[sync]["connection"] == request_id
    assert async_ not in server.wait_for_events(request_id, sync, async_)


def test_concurrent_requests_never_see_each_others_values(structured_server: Server) -> None:
    server = structured_server
    ids = [f"concurrent-{server.handler}-{n}" for n in range(300)]

    async def load() -> list[dict[str, Any]]:
        limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
        async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=30) as client:
            queue: asyncio.Queue[str] = asyncio.Queue()
            for request_id in ids:
                queue.put_nowait(request_id)
            answers: list[dict[str, Any]] = []

            async def worker() -> None:
                while not queue.empty():
                    request_id = queue.get_nowait()
                    response = await client.get(
                        "/connection/", headers={"X-Request-Id": request_id}
                    )
                    answers.append({"asked": request_id, **response.json()})

            await asyncio.gather(*(worker() for _ in range(32)))
            return answers

    answers = asyncio.run(load())
    assert len(answers) == len(ids)
    for answer in answers:
        assert answer["request_id"] == answer["local_id"] == answer["header_id"] == answer["asked"]
    stages = ("request_finished (sync)", "request_finished (async)")
    for request_id, events in server.wait_for_all_events(ids, *stages).items():
        for stage in stages:
            assert events[stage]["request_id"] == request_id
            assert events[stage]["local_id"] == request_id
            assert events[stage]["connection"] == request_id


def test_a_client_disconnect_cancels_the_view_and_request_finished_still_sees_its_state(
    structured_server: Server,
) -> None:
    server = structured_server
    request_id = "disconnect-" + server.url.rsplit(":", 1)[1]
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as client:
        client.sendall(
            f"GET /wait/ HTTP/1.1\r\nHost: {host}\r\nX-Request-Id: {request_id}\r\n\r\n".encode()
        )
        assert "view started" in server.wait_for_events(request_id, "view started")
    stages = ("view cancelled", "request_finished (sync)", "request_finished (async)")
    events = server.wait_for_events(request_id, *stages)
    assert set(stages) <= events.keys()
    for stage in stages:
        assert events[stage]["connection"] == request_id
        assert events[stage]["local_id"] == request_id
