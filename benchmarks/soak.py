"""Load soak: StructuredASGIHandler under uvicorn on 127.0.0.1, many real requests.

Every request carries a unique id, which a request_started receiver puts in
context; the view and the request_finished receivers (sync and async) must
each see exactly that id. Counts cross-talk (a stage seeing another id or
none), errors, and the server's resident memory after the warm-up and at the
end. Bounded: a fixed number of requests and a time limit; it stops itself.

    python benchmarks/soak.py [--requests 20000] [--connections 64] [--limit 600]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).parent.parent / "demo"))

from demo_project.serve import Served, uvicorn

STAGES = ("middleware", "request_finished (sync)", "request_finished (async)")
RESIDENT_GROWTH_LIMIT = 16 * 1024 * 1024


@dataclass
class Tally:
    sent: int = 0
    errors: int = 0
    first_errors: list[str] = field(default_factory=list)
    cross_talk: int = 0
    checked_events: int = 0
    pending: set[str] = field(default_factory=set)
    stages: dict[str, set[str]] = field(default_factory=dict)
    resident_after_warm_up: int = 0
    resident_at_end: int = 0

    def error(self, description: str) -> None:
        self.errors += 1
        if len(self.first_errors) < 5:
            self.first_errors.append(description)


def check_events(events: dict[str, list[dict[str, Any]]], tally: Tally) -> None:
    for request_id, recorded in events.items():
        if request_id not in tally.pending:
            continue
        for event in recorded:
            tally.checked_events += 1
            seen = (event["request_id"], event["local_id"], event["header_id"])
            if seen != (request_id, request_id, request_id):
                tally.cross_talk += 1
        stages = tally.stages.setdefault(request_id, set())
        stages.update(event["stage"] for event in recorded)
        if stages >= set(STAGES):
            tally.pending.discard(request_id)
            del tally.stages[request_id]


async def soak(served: Served, requests: int, connections: int, tally: Tally) -> None:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in range(requests):
        queue.put_nowait(n)
    warm_up = requests // 10
    async with httpx.AsyncClient(base_url=served.url, limits=limits, timeout=30) as client:

        async def worker() -> None:
            while not queue.empty():
                n = queue.get_nowait()
                request_id = f"soak-{n}"
                tally.pending.add(request_id)
                try:
                    response = await client.get(
                        "/connection/", headers={"X-Request-Id": request_id}
                    )
                    answer = response.json()
                except (httpx.HTTPError, ValueError) as error:
                    tally.error(f"{request_id}: {type(error).__name__}: {error}")
                    continue
                tally.sent += 1
                if response.status_code != 200:
                    tally.error(f"{request_id}: HTTP {response.status_code}")
                elif (answer["request_id"], answer["local_id"]) != (request_id, request_id):
                    tally.cross_talk += 1
                if n == warm_up:
                    tally.resident_after_warm_up = served.resident_bytes()
                if n % 1000 == 0:
                    check_events((await client.get("/events/?take=1")).json(), tally)

        await asyncio.gather(*(worker() for _ in range(connections)))
        for _ in range(100):
            check_events((await client.get("/events/?take=1")).json(), tally)
            if not tally.pending:
                break
            await asyncio.sleep(0.05)
    tally.resident_at_end = served.resident_bytes()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--limit", type=float, default=600, help="seconds before giving up")
    parser.add_argument("--loop", default="asyncio", choices=["asyncio", "uvloop"])
    arguments = parser.parse_args()
    tally = Tally()
    started = time.monotonic()
    with uvicorn("structured", arguments.loop) as served:
        asyncio.run(
            asyncio.wait_for(
                soak(served, arguments.requests, arguments.connections, tally), arguments.limit
            )
        )
    elapsed = time.monotonic() - started
    grown = tally.resident_at_end - tally.resident_after_warm_up
    print(
        f"| {arguments.requests:,} requests | {arguments.connections} connections "
        f"| {arguments.loop} | {elapsed:.0f} s | {tally.errors} errors "
        f"| {tally.cross_talk} cross-talk | {len(tally.pending)} unfinished "
        f"| {tally.checked_events:,} stage events checked "
        f"| RSS {tally.resident_after_warm_up / 2**20:.1f} MiB after warm-up, "
        f"{tally.resident_at_end / 2**20:.1f} MiB at the end |"
    )
    for description in tally.first_errors:
        print(f"error: {description}")
    failed = tally.errors or tally.cross_talk or tally.pending or grown > RESIDENT_GROWTH_LIMIT
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
