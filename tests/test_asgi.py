"""StructuredASGIHandler under a real server: uvicorn on 127.0.0.1, real HTTP requests.

The project is tests/demo_project. Every example runs against the
StructuredASGIHandler (on asyncio's loop and on uvloop) and against Django's
stock ASGIHandler of the installed version, whose behaviour is asserted too,
so the suite itself documents the difference (Django ticket #36714).
"""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import django
import httpx
import pytest
from demo_project.serve import uvicorn
from django.core import asgi as django_asgi
from django.core.handlers.asgi import ASGIHandler

from structured_signals.asgi import StructuredASGIHandler, get_asgi_application

if TYPE_CHECKING:
    from collections.abc import Iterator

# What Django's own ASGIHandler carries from one stage to the next (#36714):
# (sync request_started receiver -> view, async request_started receiver ->
# view, view -> sync request_finished receiver, view -> async one).
# 4.2 sends request_started through sync_to_async(send), which copies the
# sync receivers' writes back, and never awaits an async receiver; 5.2 and
# 6.0 gather every receiver in a task of its own and run the view in another
# task; 6.1 shares one context among receivers and runs the view in place.
STOCK_CARRIES = {
    (4, 2): (True, False, True, False),
    (5, 2): (False, False, False, False),
    (6, 0): (False, False, False, False),
    (6, 1): (True, True, True, True),
}[django.VERSION[:2]]
SYNC_FINISHED, ASYNC_FINISHED = "request_finished (sync)", "request_finished (async)"


@dataclass
class Server:
    handler: str
    url: str

    @property
    def carries(self) -> tuple[bool, bool, bool, bool]:
        """Which stages this server's handler carries context across (STOCK_CARRIES)."""
        return (True, True, True, True) if self.handler == "structured" else STOCK_CARRIES

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


@pytest.fixture(
    scope="module",
    params=[("structured", "asyncio"), ("structured", "uvloop"), ("django", "asyncio")],
    ids=["structured-asyncio", "structured-uvloop", "django-asyncio"],
)
def server(request: pytest.FixtureRequest) -> Iterator[Server]:
    """The StructuredASGIHandler on each loop, and Django's own handler."""
    handler, loop = request.param
    with uvicorn(handler, loop) as served:
        yield Server(handler, served.url)


@pytest.fixture(scope="module", params=["asyncio", "uvloop"])
def structured_server(request: pytest.FixtureRequest) -> Iterator[Server]:
    """The StructuredASGIHandler on each loop."""
    with uvicorn("structured", request.param) as served:
        yield Server("structured", served.url)


@pytest.mark.parametrize("path", ["/whoami/", "/whoami-sync/"])
def test_request_started_writes_reach_the_middleware_and_the_view(
    server: Server, path: str
) -> None:
    request_id = f"started-{server.handler}-{path}"
    seen = server.get(path, request_id)
    middleware = server.wait_for_events(request_id, "middleware")["middleware"]
    from_sync, from_async, _, _ = server.carries
    assert seen["request_id"] == middleware["request_id"] == (request_id if from_sync else None)
    assert seen["local_id"] == middleware["local_id"] == (request_id if from_async else None)


@pytest.mark.parametrize("path", ["/connection/", "/stream/"])
def test_the_views_writes_reach_request_finished_sync_and_async(server: Server, path: str) -> None:
    request_id = f"finished-{server.handler}-{path}"
    response = httpx.get(server.url + path, headers={"X-Request-Id": request_id}, timeout=10)
    assert response.status_code == 200
    _, _, to_sync, to_async = server.carries
    events = server.wait_for_events(
        request_id,
        *(
            stage
            for stage, carried in ((SYNC_FINISHED, to_sync), (ASYNC_FINISHED, to_async))
            if carried
        ),
    )
    for stage, carried in ((SYNC_FINISHED, to_sync), (ASYNC_FINISHED, to_async)):
        if carried:
            assert events[stage]["connection"] == request_id
            assert events[stage]["request_id"] == request_id
        else:
            # Without the view's context, request_finished cannot even tell
            # which request finished: it records under no id, or never runs.
            assert stage not in events


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
    stages = (SYNC_FINISHED, ASYNC_FINISHED)
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
    stages = ("view cancelled", SYNC_FINISHED, ASYNC_FINISHED)
    events = server.wait_for_events(request_id, *stages)
    assert set(stages) <= events.keys()
    for stage in stages:
        assert events[stage]["connection"] == request_id
        assert events[stage]["local_id"] == request_id


@pytest.fixture
def entry_point(monkeypatch: pytest.MonkeyPatch) -> None:
    """Django's entry point module as it was, once the test is over."""
    monkeypatch.setattr(django_asgi, "ASGIHandler", vars(django_asgi)["ASGIHandler"])
    monkeypatch.setattr(django_asgi, "get_asgi_application", django_asgi.get_asgi_application)


@pytest.mark.usefixtures("entry_point")
def test_the_entry_point_makes_djangos_hand_out_the_structured_handler_and_leaves_the_class() -> (
    None
):
    assert type(get_asgi_application()) is StructuredASGIHandler
    assert type(django_asgi.get_asgi_application()) is StructuredASGIHandler
    assert type(ASGIHandler()) is ASGIHandler


@pytest.mark.usefixtures("entry_point")
def test_the_entry_point_builds_the_handler_itself_when_djangos_leads_back_to_it() -> None:
    django_asgi.get_asgi_application = get_asgi_application
    assert type(get_asgi_application()) is StructuredASGIHandler
