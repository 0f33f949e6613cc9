"""Each APM set up as its docs say, recording in memory instead of sending anywhere.

Spans are recorded as dicts {"name", "detail", "id", "parent", "trace"}
(Sentry's transaction is the span its spans hang from, named by its op);
Sentry's error events as {"error": exception type, "trace"}.
"""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING, Any

from django.core.signals import request_finished, request_started

if TYPE_CHECKING:
    from collections.abc import Callable
    from contextlib import AbstractContextManager

    from ddtrace.trace import Span as DatadogSpan
    from opentelemetry.sdk.trace import ReadableSpan
    from sentry_sdk.envelope import Envelope

# Invariant: changed only under _LOCK (spans end in the server's threads too).
_RECORDED: list[dict[str, Any]] = []
_LOCK = threading.Lock()


def recorded() -> list[dict[str, Any]]:
    with _LOCK:
        return list(_RECORDED)


def _record(*items: dict[str, Any]) -> None:
    with _LOCK:
        _RECORDED.extend(items)


def install(apm: str) -> None:
    """Set `apm` up; before Django is, as ddtrace and OpenTelemetry's instrumentor ask."""
    if apm:
        {"sentry": _sentry, "otel": _opentelemetry, "ddtrace": _ddtrace}[apm]()


def connect_span_receivers(span: Callable[[str], AbstractContextManager[object]]) -> None:
    """A sync request_started and an async request_finished receiver, each in a span of its own.

    Whether they land in the request's trace, under its root, is what an APM
    shows of receivers (Sentry opens spans for sync receivers itself).
    """

    def started(**kwargs: Any) -> None:
        with span("request_started"):
            pass

    async def finished(**kwargs: Any) -> None:
        with span("request_finished"):
            await asyncio.sleep(0)

    request_started.connect(started, weak=False)
    request_finished.connect(finished, weak=False)


def _sentry() -> None:
    import sentry_sdk
    from sentry_sdk.integrations.django import DjangoIntegration
    from sentry_sdk.transport import Transport

    class MemoryTransport(Transport):
        def capture_envelope(self, envelope: Envelope) -> None:
            for item in envelope.items:
                event = item.get_event() or item.get_transaction_event()
                if event is not None:
                    _record(*_sentry_items(event))

    sentry_sdk.init(
        dsn="http://public@127.0.0.1:9/1",  # never reached: the transport keeps everything
        transport=MemoryTransport,
        integrations=[DjangoIntegration(signals_spans=True)],
        traces_sample_rate=1.0,
    )


def _sentry_items(event: Any) -> list[dict[str, Any]]:
    trace = event["contexts"]["trace"]
    if event.get("type") != "transaction":
        errors = event.get("exception", {}).get("values", [])
        return [{"error": error["type"], "trace": trace["trace_id"]} for error in errors]
    root = {
        "name": trace.get("op"),
        "detail": event["transaction"],
        "id": trace["span_id"],
        "parent": None,
        "trace": trace["trace_id"],
    }
    return [
        root,
        *(
            {
                "name": span.get("op"),
                "detail": span.get("description"),
                "id": span["span_id"],
                "parent": span.get("parent_span_id"),
                "trace": span["trace_id"],
            }
            for span in event.get("spans", [])
        ),
    ]


def _opentelemetry() -> None:
    from opentelemetry import trace
    from opentelemetry.instrumentation.django import DjangoInstrumentor
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    class MemoryExporter(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            _record(*(_opentelemetry_span(span) for span in spans))
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(MemoryExporter()))
    trace.set_tracer_provider(provider)
    DjangoInstrumentor().instrument()
    tracer = trace.get_tracer("eco_project")
    connect_span_receivers(lambda signal: tracer.start_as_current_span(f"eco.{signal}"))


def _opentelemetry_span(span: ReadableSpan) -> dict[str, Any]:
    context = span.get_span_context()
    assert context is not None
    return {
        "name": span.name,
        "detail": (span.attributes or {}).get("http.route"),
        "id": context.span_id,
        "parent": None if span.parent is None else span.parent.span_id,
        "trace": context.trace_id,
    }


def _ddtrace() -> None:
    import ddtrace
    from ddtrace.trace import TraceFilter, tracer

    class KeepInMemory(TraceFilter):
        def process_trace(self, trace: list[DatadogSpan]) -> None:
            _record(*(_ddtrace_span(span) for span in trace))
            # None: nothing goes on to the writer (there is no agent).

    tracer.configure(trace_processors=[KeepInMemory()])
    ddtrace.patch(django=True)
    connect_span_receivers(lambda signal: tracer.trace(f"eco.{signal}"))


def _ddtrace_span(span: DatadogSpan) -> dict[str, Any]:
    return {
        "name": span.name,
        "detail": span.resource,
        "id": span.span_id,
        "parent": span.parent_id or None,
        "trace": span.trace_id,
    }
