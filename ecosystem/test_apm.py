"""Sentry, OpenTelemetry and Datadog (ddtrace) record a request as they do without us.

Each APM records in memory in the server (eco_project.telemetry). For one
request to /whoami/ the spans' tree (names and details, each under its
parent) must be the one the same project records without structured_signals
(Django's entry point, Django's stock handler), and our promise must hold
beside the APM.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import httpx
import pytest
from scenario import check_request_state, get
from servers import serve

# (ECO_WITHOUT_US, ECO_ENTRY): the baseline, then both our entry points.
WITHOUT_US = {"ECO_WITHOUT_US": "1", "ECO_ENTRY": "django"}
OURS = [{"ECO_ENTRY": "django"}, {"ECO_ENTRY": "structured"}]
# The root span each APM opens for a request.
ROOT = {"sentry": "http.server", "otel": "GET /whoami/", "ddtrace": "django.request"}


# The receivers' spans in the request's trace: Sentry's own for sync receivers,
# the project's (eco_project.telemetry) for the others. ddtrace's root span ends
# when the last body chunk is sent, before request_finished, with Django's
# handler as with ours.
RECEIVER_SPANS = {
    "sentry": {"demo_project.state.started_sync", "demo_project.state.finished_sync"},
    "otel": {"eco.request_started", "eco.request_finished"},
    "ddtrace": {"eco.request_started"},
}


def recorded(url: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = httpx.get(url + "/telemetry/", timeout=10).json()["recorded"]
    return items


def trace_of(url: str, apm: str, request_id: str) -> list[dict[str, Any]]:
    """The spans of the one trace whose root is the request to /whoami/ (10 s at most)."""
    get(url, "/whoami/", request_id)
    deadline = time.monotonic() + 10
    while True:
        spans = [item for item in recorded(url) if "id" in item]
        roots = [s for s in spans if s["parent"] is None and s["name"] == ROOT[apm]]
        roots = [r for r in roots if "whoami" in str(r["name"]) + str(r["detail"])]
        if roots or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    (root,) = roots
    return [span for span in spans if span["trace"] == root["trace"]]


def tree(spans: list[dict[str, Any]]) -> Counter[tuple[Any, ...]]:
    """Each span as (name, detail, parent's name, parent's detail); a span's parent must exist."""
    by_id = {span["id"]: span for span in spans}
    shape: Counter[tuple[Any, ...]] = Counter()
    for span in spans:
        parent = by_id[span["parent"]] if span["parent"] is not None else None
        assert span["parent"] is None or parent is not None, f"orphan span {span}"
        shape[
            (
                span["name"],
                span["detail"],
                None if parent is None else parent["name"],
                None if parent is None else parent["detail"],
            )
        ] += 1
    return shape


def baseline(apm: str) -> Counter[tuple[Any, ...]]:
    with serve(ECO_APM=apm, **WITHOUT_US) as url:
        return tree(trace_of(url, apm, "baseline"))


@pytest.fixture(scope="module", params=["sentry", "otel", "ddtrace"])
def apm(request: pytest.FixtureRequest) -> tuple[str, Counter[tuple[Any, ...]]]:
    """Each APM, with the tree of /whoami/ it records without us."""
    name: str = request.param
    return name, baseline(name)


@pytest.mark.parametrize("entry", OURS, ids=lambda entry: f"entry-{entry['ECO_ENTRY']}")
def test_the_apm_records_the_request_as_without_us_and_our_promise_holds(
    apm: tuple[str, Counter[tuple[Any, ...]]], entry: dict[str, str]
) -> None:
    name, without_us = apm
    with serve(ECO_APM=name, **entry) as url:
        spans = trace_of(url, name, "ours")
        assert tree(spans) == without_us
        receivers = {s["detail"] if name == "sentry" else s["name"] for s in spans}
        assert RECEIVER_SPANS[name] <= receivers, receivers
        assert len({span["trace"] for span in spans}) == 1
        check_request_state(url, f"{name}-{entry['ECO_ENTRY']}")


@pytest.mark.parametrize("entry", OURS, ids=lambda entry: f"entry-{entry['ECO_ENTRY']}")
def test_sentry_captures_a_views_error_in_the_requests_trace(entry: dict[str, str]) -> None:
    with serve(ECO_APM="sentry", **entry) as url:
        assert httpx.get(url + "/boom/", timeout=10).status_code == 500
        deadline = time.monotonic() + 10
        while not (errors := [i for i in recorded(url) if "error" in i]):
            assert time.monotonic() < deadline, "no error event captured"
            time.sleep(0.05)
        (error,) = errors
        assert error["error"] == "ZeroDivisionError"
        (transaction,) = [
            span for span in recorded(url) if span.get("detail") == "/boom/" and not span["parent"]
        ]
        assert transaction["trace"] == error["trace"]
