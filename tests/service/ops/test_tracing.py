"""OpenTelemetry traces: one request under a client's `traceparent` gives its trace's spans for
decode, queue wait, inference and encode (the `otel` extra; skipped without it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.helpers import TINY_MODEL, png, until

trace = pytest.importorskip("opentelemetry.trace", reason="needs the `otel` extra")
sdk_trace = pytest.importorskip("opentelemetry.sdk.trace", reason="needs the `otel` extra")
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
IMAGE = {"image": ("x.png", png(np.full((40, 48), 90, dtype=np.uint8)), "image/png")}


@pytest.fixture(scope="module")
def exporter() -> Iterator[InMemorySpanExporter]:
    """Spans of this process, kept in memory (the process-wide provider can be set only once)."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, sdk_trace.TracerProvider):
        provider = sdk_trace.TracerProvider()
        trace.set_tracer_provider(provider)
    kept = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(kept))
    yield kept
    kept.shutdown()


def test_a_mask_request_is_traced_under_the_clients_traceparent(
    exporter: InMemorySpanExporter, tiny_model_dir: Path, tmp_path: Path
) -> None:
    settings = Settings(model_dir=tiny_model_dir, state_dir=tmp_path / "state", api_key=None)
    with TestClient(create_app(settings)) as client:
        until(lambda: client.get("/readyz").status_code == 200, "never became ready")
        exporter.clear()
        answer = client.post(
            f"/v1/models/{TINY_MODEL}/mask",
            files=IMAGE,
            headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"},
        )
        assert answer.status_code == 200

    def ours() -> list[sdk_trace.ReadableSpan]:
        return [
            span
            for span in exporter.get_finished_spans()
            if span.context is not None and f"{span.context.trace_id:032x}" == TRACE_ID
        ]

    until(lambda: any(span.kind == trace.SpanKind.SERVER for span in ours()), "no server span")
    spans = {span.name: span for span in ours()}
    parents = {span.context.span_id: span.parent.span_id for span in ours() if span.parent}
    # The service's server span (FastAPI may add spans of its own, under it or beside it).
    server = next(span for span in ours() if "http.response.status_code" in (span.attributes or {}))
    assert server.name == "POST /v1/models/{model}/mask"
    assert server.parent is not None and f"{server.parent.span_id:016x}" == PARENT_ID
    assert server.attributes is not None and server.attributes["http.response.status_code"] == 200
    assert server.context is not None

    def under_server(span_id: int) -> bool:
        while span_id in parents:
            span_id = parents[span_id]
            if span_id == server.context.span_id:
                return True
        return False

    for stage in ("decode", "queue", "inference", "encode"):
        assert stage in spans, f"no {stage} span in {sorted(spans)}"
        assert under_server(spans[stage].context.span_id), f"{stage} is not the request's"
    inference = spans["inference"]
    assert inference.attributes is not None and inference.attributes["unet.batch_size"] == 1
    assert [f"{link.context.trace_id:032x}" for link in inference.links] == [TRACE_ID]
    # Warm-up ran outside any request: none of its passes joined this trace.
    assert len([span for span in ours() if span.name == "inference"]) == 1


def test_the_console_exporter_is_configured_from_the_environment() -> None:
    script = (
        "from service.ops import tracing\n"
        "assert tracing.configure_tracing()\n"
        "with tracing.request_span('GET /x', {'traceparent': "
        f"'00-{TRACE_ID}-{PARENT_ID}-01'}}):\n"
        "    pass\n"
        "tracing.shut_down()\n"
    )
    env = {**os.environ, "OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "unet-test"}
    ran = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert ran.returncode == 0, ran.stderr
    span = json.loads(ran.stdout)
    assert span["name"] == "GET /x" and span["context"]["trace_id"] == f"0x{TRACE_ID}"
    assert span["parent_id"] == f"0x{PARENT_ID}"
    assert span["resource"]["attributes"]["service.name"] == "unet-test"
