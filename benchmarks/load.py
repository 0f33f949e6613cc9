"""A small HTTP/1.1 load generator, run in its own process by end_to_end.py.

Keeps `--connections` keep-alive connections to 127.0.0.1 busy with GET
requests, each with its own X-Request-Id, until `--requests` have been
answered or `--duration` seconds passed; prints one JSON line with the count,
the errors, requests per second and the p50/p99 latency.

    python benchmarks/load.py --port 8000 --path /whoami/ --requests 5000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time


async def read_body(reader: asyncio.StreamReader, head: bytes) -> None:
    if b"transfer-encoding: chunked" in head:
        while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
            await reader.readexactly(size + 2)
        await reader.readuntil(b"\r\n")
        return
    for line in head.split(b"\r\n"):
        if line.startswith(b"content-length:"):
            await reader.readexactly(int(line.split(b":")[1]))


async def client(
    port: int, path: str, prefix: str, budget: list[int], deadline: float, latencies: list[float]
) -> int:
    """Send requests on one connection while the budget lasts; the number of errors."""
    errors = 0
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while budget[0] > 0 and time.monotonic() < deadline:
            budget[0] -= 1
            request = (
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"X-Request-Id: {prefix}-{budget[0]}\r\n\r\n"
            )
            started = time.perf_counter()
            writer.write(request.encode())
            head = await reader.readuntil(b"\r\n\r\n")
            await read_body(reader, head.lower())
            latencies.append(time.perf_counter() - started)
            if not head.startswith(b"HTTP/1.1 200"):
                errors += 1
    finally:
        writer.close()
    return errors


async def load(
    port: int, path: str, connections: int, requests: int, duration: float
) -> dict[str, float]:
    latencies: list[float] = []
    budget = [requests]
    started = time.perf_counter()
    deadline = time.monotonic() + duration
    errors = await asyncio.gather(
        *(client(port, path, f"c{n}", budget, deadline, latencies) for n in range(connections))
    )
    elapsed = time.perf_counter() - started
    ordered = sorted(latencies)
    return {
        "requests": len(latencies),
        "errors": sum(errors),
        "seconds": elapsed,
        "rps": len(latencies) / elapsed,
        "p50_ms": statistics.median(ordered) * 1000,
        "p99_ms": ordered[int(len(ordered) * 0.99) - 1] * 1000,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/whoami/")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--duration", type=float, default=60)
    parser.add_argument("--cpu", type=int, help="run on this CPU only")
    arguments = parser.parse_args()
    if arguments.cpu is not None:
        os.sched_setaffinity(0, {arguments.cpu})
    result = asyncio.run(
        load(
            arguments.port,
            arguments.path,
            arguments.connections,
            arguments.requests,
            arguments.duration,
        )
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
