"""End to end: requests per second under uvicorn, Django's handler against ours.

Serves demo/demo_project (3 request_started and 2 request_finished
receivers, sync and async) with uvicorn on 127.0.0.1, one server with
Django's ASGIHandler and one with StructuredASGIHandler, both started (and
warmed up) once, and drives them in turn, round after round in alternating
order, with benchmarks/load.py in another process: a fixed number of
requests per round, bounded in time. With two CPUs or more, the servers run
on one and the load generator on another, so that they do not take turns on
the same core. Each round pairs the two handlers; the ratio reported is the
median of the rounds' ratios.

    python benchmarks/end_to_end.py [--rounds 30] [--requests 3000]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import django

sys.path.insert(0, str(Path(__file__).parent.parent / "demo"))

from demo_project.serve import uvicorn

LOAD = Path(__file__).parent / "load.py"
HANDLERS = {"django": "Django's ASGIHandler", "structured": "StructuredASGIHandler"}
# The server gets the first CPU this process may use, the load generator the
# second; with a single CPU they share it.
CPUS = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
SERVER_CPU, LOAD_CPU = (CPUS[0], CPUS[1]) if len(CPUS) >= 2 else (None, None)


def load(port: str, requests: int, connections: int) -> dict[str, float]:
    """One round of load on `port`, from another process: what load.py measured."""
    command = [sys.executable, str(LOAD), "--port", port, "--connections", str(connections)]
    command += ["--requests", str(requests), "--duration", "120"]
    if LOAD_CPU is not None:
        command += ["--cpu", str(LOAD_CPU)]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    result: dict[str, float] = json.loads(done.stdout)
    return result


def throughput(runs: list[dict[str, float]]) -> float:
    return sum(run["requests"] for run in runs) / sum(run["seconds"] for run in runs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--connections", type=int, default=16)
    arguments = parser.parse_args()
    samples: dict[str, list[dict[str, float]]] = {handler: [] for handler in HANDLERS}
    order = list(HANDLERS)
    with contextlib.ExitStack() as servers:
        ports = {}
        for handler in HANDLERS:
            served = servers.enter_context(uvicorn(handler))
            if SERVER_CPU is not None:
                # Before the first request: the threads Django starts inherit it.
                os.sched_setaffinity(served.pid, {SERVER_CPU})
            ports[handler] = served.url.rsplit(":", 1)[1]
            load(ports[handler], arguments.requests // 4, arguments.connections)
        for round_ in range(arguments.rounds):
            for handler in order if round_ % 2 == 0 else order[::-1]:
                samples[handler].append(
                    load(ports[handler], arguments.requests, arguments.connections)
                )
    median = {
        handler: {
            key: statistics.median(s[key] for s in runs) for key in ("rps", "p50_ms", "p99_ms")
        }
        for handler, runs in samples.items()
    }
    errors = sum(s["errors"] for runs in samples.values() for s in runs)
    ratios = sorted(
        ours["rps"] / theirs["rps"]
        for ours, theirs in zip(samples["structured"], samples["django"])
    )
    quartiles = statistics.quantiles(ratios, n=4)
    pooled = throughput(samples["structured"]) / throughput(samples["django"])
    command = (
        f"python benchmarks/end_to_end.py --rounds {arguments.rounds} "
        f"--requests {arguments.requests} --connections {arguments.connections}"
    )
    pinning = (
        f"servers on CPU {SERVER_CPU}, load generator on CPU {LOAD_CPU}"
        if SERVER_CPU is not None
        else "servers and load generator on one CPU"
    )
    lines = [
        f"End to end, medians of {arguments.rounds} rounds: Python {sys.version.split()[0]}, "
        f"Django {django.get_version()}, uvicorn, {arguments.connections} connections, "
        f"{pinning}, {errors} errors, `{command}`",
        "",
        "| handler | requests/s | p50 ms | p99 ms |",
        "|---|---|---|---|",
        *(
            f"| {HANDLERS[h]} | {m['rps']:,.0f} | {m['p50_ms']:.2f} | {m['p99_ms']:.2f} |"
            for h, m in median.items()
        ),
        "",
        f"StructuredASGIHandler / Django's requests per second, median of the rounds' "
        f"ratios: {statistics.median(ratios):.3f} (middle half of the rounds "
        f"{quartiles[0]:.3f} to {quartiles[2]:.3f}, all {ratios[0]:.3f} to {ratios[-1]:.3f}; "
        f"all requests over all time: {pooled:.3f})",
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    results = Path(__file__).parent / "results"
    results.mkdir(exist_ok=True)
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    (results / f"end-to-end-{python}-django{django.VERSION[0]}.{django.VERSION[1]}.md").write_text(
        report
    )
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
