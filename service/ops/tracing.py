"""OpenTelemetry traces: off unless `OTEL_TRACES_EXPORTER` names an exporter and the `otel`
extra is installed; configured by the standard `OTEL_*` variables.

Without the extra every helper here is a no-op; with it but no exporter configured, the API's
default (non-recording) provider makes spans cost a few microseconds.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from typing import Any

try:
    from opentelemetry import propagate, trace
except ImportError:  # the `otel` extra is not installed
    trace = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

TRACER = "unet-service"
DEFAULT_SERVICE_NAME = "unet-service"


def configure_tracing() -> bool:
    """Install the SDK's tracer provider when `OTEL_TRACES_EXPORTER` asks for one; whether it did.

    `console` and `otlp` (the extra's OTLP/HTTP exporter) are understood; the service name,
    resource attributes, sampler, batch sizes and OTLP endpoint come from the SDK's own
    `OTEL_*` variables.
    """
    wanted = os.environ.get("OTEL_TRACES_EXPORTER", "none").strip().lower()
    if wanted in ("", "none") or os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    if trace is None:
        log.warning("OTEL_TRACES_EXPORTER=%s but the `otel` extra is not installed", wanted)
        return False
    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return True  # configured already (by this process's first app, or its host)
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SpanExporter,
    )

    exporters: list[SpanExporter] = []
    for name in (part.strip() for part in wanted.split(",")):
        if name == "console":
            exporters.append(ConsoleSpanExporter())
        elif name == "otlp":
            try:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                    OTLPSpanExporter,
                )
            except ImportError:
                log.warning("OTEL_TRACES_EXPORTER=otlp needs the `otel` extra's OTLP exporter")
                continue
            exporters.append(OTLPSpanExporter())
        else:
            log.warning("OTEL_TRACES_EXPORTER: unknown exporter %r (console, otlp)", name)
    if not exporters:
        return False
    service = os.environ.get("OTEL_SERVICE_NAME") or DEFAULT_SERVICE_NAME
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service}))
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    log.info("tracing on: %s exporter(s), service %s", wanted, service)
    return True


def shut_down() -> None:
    """Export the spans still buffered (at shutdown; the provider stays for other apps)."""
    if trace is not None:
        provider = trace.get_tracer_provider()
        if hasattr(provider, "force_flush"):
            provider.force_flush()


def _tracer() -> Any:
    return trace.get_tracer(TRACER)


def current_span() -> Any:
    """The span current in this context (to parent work done elsewhere), or None."""
    if trace is None:
        return None
    span = trace.get_current_span()
    return span if span.get_span_context().is_valid else None


@contextmanager
def request_span(name: str, headers: Mapping[str, str]) -> Iterator[Any]:
    """The server span of one request, continuing the trace of its `traceparent` header."""
    if trace is None:
        yield None
        return
    parent = propagate.extract(headers)
    with _tracer().start_as_current_span(name, context=parent, kind=trace.SpanKind.SERVER) as span:
        yield span


def span(name: str, **attributes: Any) -> Any:
    """A child span of the current one, as a context manager (a no-op without the extra)."""
    if trace is None:
        return nullcontext()
    return _tracer().start_as_current_span(name, attributes=attributes)


def child_span(parent: Any, name: str, **attributes: Any) -> Any:
    """A span under `parent` (a span from `current_span`), for work in another thread."""
    if trace is None or parent is None:
        return nullcontext()
    context = trace.set_span_in_context(parent)
    return _tracer().start_as_current_span(name, context=context, attributes=attributes)


def record_span(
    parent: Any,
    name: str,
    start_ns: int,
    end_ns: int,
    links: Iterable[Any] = (),
    **attributes: Any,
) -> None:
    """A finished span under `parent` from `start_ns` to `end_ns` (time.time_ns), linked to
    the spans in `links`."""
    if trace is None or parent is None:
        return
    context = trace.set_span_in_context(parent)
    recorded = _tracer().start_span(
        name,
        context=context,
        start_time=start_ns,
        attributes=attributes,
        links=[trace.Link(other.get_span_context()) for other in links if other is not None],
    )
    recorded.end(end_time=end_ns)


def now_ns() -> int:
    """The wall clock in nanoseconds, as spans take it."""
    return time.time_ns()
