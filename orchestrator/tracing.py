"""OpenTelemetry traces, off by default. On when ``OTEL_TRACES_EXPORTER`` names exporters (``otlp``,
``console``, or both, comma-separated); configured by the standard variables: ``OTEL_SERVICE_NAME``,
``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``,
OTLP over HTTP/protobuf), ``OTEL_BSP_SCHEDULE_DELAY`` and the rest the SDK reads.

The spans come from the OpenTelemetry instrumentation packages (the ``otel`` extra): Flask (the API's
requests), Celery (publishing a step message and running its attempt: the trace context travels in the
message's headers), SQLAlchemy, redis and httpx (model and tool calls). Each process calls
``configure`` once, before it builds its engines and clients (a prefork worker child, after the fork).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

log = logging.getLogger(__name__)

EXPORTERS = ("otlp", "console")
_configured_pid: int | None = None


def exporters() -> list[str]:
    """The exporters ``OTEL_TRACES_EXPORTER`` names; empty (tracing off) when unset or ``none``."""
    names = [n.strip().lower() for n in os.environ.get("OTEL_TRACES_EXPORTER", "").split(",")]
    return [n for n in names if n and n != "none"]


def configure(service: str, *, flask_app=None) -> bool:
    """Start tracing in this process if ``OTEL_TRACES_EXPORTER`` asks for it: the tracer provider with
    its exporters, and the instrumentation (``flask_app`` instrumented too, if given). ``service`` is the
    service name unless ``OTEL_SERVICE_NAME`` says otherwise. False if tracing is off."""
    global _configured_pid
    names = exporters()
    if not names:
        return False
    unknown = [n for n in names if n not in EXPORTERS]
    if unknown:
        raise ValueError(f"OTEL_TRACES_EXPORTER names {unknown}: Switchyard exports traces with "
                         f"{' and '.join(EXPORTERS)} (or none); fix the variable")
    if _configured_pid != os.getpid():
        _start_provider(service, names)
        _instrument()
        _configured_pid = os.getpid()
        log.info("tracing on: exporting spans of %s with %s", service, ", ".join(names))
    if flask_app is not None:
        from opentelemetry.instrumentation.flask import FlaskInstrumentor

        FlaskInstrumentor().instrument_app(flask_app)
    return True


def _start_provider(service: str, names: list[str]) -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor

    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": service}
    provider = TracerProvider(resource=Resource.create(attributes))
    if "otlp" in names:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    if "console" in names:
        # Each span printed as it ends: a process's output shows its spans even if it is killed.
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(provider)


def _instrument() -> None:
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    CeleryInstrumentor().instrument()
    # Its declared range stops below SQLAlchemy 2.1, which it traces as well (tests/integration/test_tracing.py).
    SQLAlchemyInstrumentor().instrument(skip_dep_check=True)
    RedisInstrumentor().instrument()
    HTTPXClientInstrumentor().instrument()


def inject() -> dict[str, str]:
    """The current trace context as W3C headers, to carry where a message's headers do not go (the
    doorbell); empty when tracing is off or no span is current."""
    if _configured_pid != os.getpid():
        return {}
    from opentelemetry.propagate import inject as inject_context

    carrier: dict[str, str] = {}
    inject_context(carrier)
    return carrier


@contextmanager
def continued(name: str, carrier: Mapping[str, str] | None) -> Iterator[None]:
    """A span ``name`` in the trace ``carrier`` carries (what ``inject`` gave another process); nothing
    when tracing is off or there is no carrier."""
    if _configured_pid != os.getpid() or not carrier:
        yield
        return
    from opentelemetry import trace
    from opentelemetry.propagate import extract

    with trace.get_tracer(__name__).start_as_current_span(name, context=extract(dict(carrier))):
        yield
