"""Our promise (SPEC 5), checked over HTTP against a running eco_project.

Request state set by request_started receivers (sync and async) reaches the
middleware and the view; what the view sets reaches request_finished
receivers (sync and async); 50 concurrent requests never see each other's
values; a client hanging up mid-view cancels the view and request_finished
still sees its state. Request ids are unique per call (`tag`), so one server
can be checked more than once.
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import httpx

FINISHED = ("request_finished (sync)", "request_finished (async)")
CONCURRENT = 50


def check_request_state(url: str, tag: str) -> None:
    """Every part of the promise, against the server at `url`."""
    check_started_reaches_the_view(url, tag)
    check_the_view_reaches_request_finished(url, tag)
    check_concurrent_requests_stay_apart(url, tag)
    check_a_hang_up_cancels_the_view(url, tag)


def get(url: str, path: str, request_id: str) -> dict[str, Any]:
    response = httpx.get(url + path, headers={"X-Request-Id": request_id}, timeout=10)
    response.raise_for_status()
    answer: dict[str, Any] = response.json()
    return answer


def events(url: str, request_ids: list[str], *stages: str) -> dict[str, dict[str, Any]]:
    """The events of each request by stage, once all `stages` happened (10 s at most)."""
    deadline = time.monotonic() + 10
    while True:
        every = httpx.get(url + "/events/", timeout=10).json()
        by_request = {
            request_id: {event["stage"]: event for event in every.get(request_id, [])}
            for request_id in request_ids
        }
        done = all(set(stages) <= by_stage.keys() for by_stage in by_request.values())
        if done or time.monotonic() > deadline:
            return by_request
        time.sleep(0.05)


def check_started_reaches_the_view(url: str, tag: str) -> None:
    for path in ("/whoami/", "/whoami-sync/"):
        request_id = f"started-{tag}-{path}"
        seen = get(url, path, request_id)
        assert seen["request_id"] == seen["local_id"] == request_id, seen
        middleware = events(url, [request_id], "middleware")[request_id]["middleware"]
        assert middleware["request_id"] == middleware["local_id"] == request_id, middleware


def check_the_view_reaches_request_finished(url: str, tag: str) -> None:
    for path in ("/connection/", "/stream/"):
        request_id = f"finished-{tag}-{path}"
        response = httpx.get(url + path, headers={"X-Request-Id": request_id}, timeout=10)
        assert response.status_code == 200
        seen = events(url, [request_id], *FINISHED)[request_id]
        for stage in FINISHED:
            assert seen[stage]["connection"] == seen[stage]["request_id"] == request_id, seen


def check_concurrent_requests_stay_apart(url: str, tag: str) -> None:
    ids = [f"concurrent-{tag}-{n}" for n in range(CONCURRENT)]

    async def load() -> list[dict[str, Any]]:
        limits = httpx.Limits(max_connections=CONCURRENT)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
            responses = await asyncio.gather(
                *(client.get("/connection/", headers={"X-Request-Id": id_}) for id_ in ids)
            )
        return [{"asked": id_, **r.json()} for id_, r in zip(ids, responses)]

    for answer in asyncio.run(load()):
        assert answer["request_id"] == answer["local_id"] == answer["header_id"] == answer["asked"]
    for request_id, seen in events(url, ids, *FINISHED).items():
        for stage in FINISHED:
            assert seen[stage]["request_id"] == seen[stage]["connection"] == request_id, seen


def check_a_hang_up_cancels_the_view(url: str, tag: str) -> None:
    request_id = f"hang-up-{tag}"
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as client:
        client.sendall(
            f"GET /wait/ HTTP/1.1\r\nHost: {host}\r\nX-Request-Id: {request_id}\r\n\r\n".encode()
        )
        assert "view started" in events(url, [request_id], "view started")[request_id]
    stages = ("view cancelled", *FINISHED)
    seen = events(url, [request_id], *stages)[request_id]
    assert set(stages) <= seen.keys(), seen
    for stage in stages:
        assert seen[stage]["connection"] == seen[stage]["local_id"] == request_id, seen
