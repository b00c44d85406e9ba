"""OpenTelemetry across processes: the API (`switchyard api --dev`, a process of its own) and a worker,
both with OTEL_TRACES_EXPORTER=otlp pointed at an OTLP/HTTP receiver the test runs on loopback. One
run's trace holds the API's request, its SQL, the step message's publish, the worker's attempt, its
SQL and its model call, under one trace id; with OTEL_TRACES_EXPORTER=console a worker prints its
spans instead."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

pytest.importorskip("opentelemetry.sdk", reason="install the otel extra: pip install -e '.[otel]'")
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (  # noqa: E402 - after the skip
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from orchestrator.db import repository as repo  # noqa: E402
from orchestrator.db.session import make_engine, make_sessionmaker, transaction  # noqa: E402
from orchestrator.settings import Settings  # noqa: E402
from tests.integration.conftest import Processes, fresh_database, unique, wait_for  # noqa: E402

pytestmark = pytest.mark.usefixtures("engine_processes")


class Receiver:
    """An OTLP/HTTP trace receiver on loopback: keeps (trace id, service name, span name) of every span."""

    def __init__(self):
        self.spans: list[tuple[str, str, str]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                request = ExportTraceServiceRequest.FromString(self.rfile.read(int(self.headers["Content-Length"])))
                for resource_spans in request.resource_spans:
                    attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                    for scope in resource_spans.scope_spans:
                        receiver.spans += [(s.trace_id.hex(), attributes.get("service.name", ""), s.name)
                                           for s in scope.spans]
                body = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def trace(self, trace_id: str) -> list[tuple[str, str]]:
        return [(service, name) for t, service, name in self.spans if t == trace_id]

    def trace_with(self, *wanted: tuple[str, str]) -> str | None:
        """The id of a trace holding, for each (service, prefix) of ``wanted``, a span of that service
        whose name starts with that prefix. A process exports its spans in batches, so a trace's
        first spans may arrive long before the span that ends last (a worker's attempt, after its SQL):
        waiting for the spans a test needs, rather than for any span of each service, keeps it exact."""
        for candidate in {t for t, _, _ in self.spans}:
            spans = self.trace(candidate)
            if all(any(s == service and n.startswith(prefix) for s, n in spans) for service, prefix in wanted):
                return candidate
        return None


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    yield found
    found.server.shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def otel_env(receiver: Receiver, service: str, exporter: str = "otlp") -> dict[str, str]:
    return {"OTEL_TRACES_EXPORTER": exporter, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
            "OTEL_SERVICE_NAME": service, "OTEL_BSP_SCHEDULE_DELAY": "100"}


def test_one_runs_trace_spans_the_api_and_the_worker_down_to_the_model_call(settings, artifacts, receiver):
    queue = unique("traced")  # a worker of the test's own takes the step
    procs = Processes(settings, artifacts)
    try:
        procs.start("traced-worker", "worker", "--concurrency", "1", "-Q", queue,
                    env=otel_env(receiver, "switchyard-worker"))
        procs.start("console-worker", "worker", "--concurrency", "1", "-Q", f"{queue}-console",
                    env=otel_env(receiver, "switchyard-console-worker", "console"))
        http = traced_api(procs, settings, receiver, {})
        steps = [{"id": "ask", "type": "llm", "model": "openai/test-model", "prompt": "Hello", "queue": queue},
                 {"id": "echo", "type": "tool", "tool": "echo", "args": {}, "queue": f"{queue}-console"}]
        assert http.put("/workflows/traced", json={"name": "traced", "steps": steps}).status_code == 201
        response = http.post("/runs", json={"workflow_id": "traced", "input": {}})
        assert response.status_code == 201, response.text
        run_id = response.json()["id"]
        wait_for(lambda: http.get(f"/runs/{run_id}").json()["status"] == "succeeded", 60, "the traced run to succeed")

        trace_id = wait_for(lambda: receiver.trace_with(("switchyard-api", "POST /api/v1/runs"),
                                                        ("switchyard-worker", "run/")), 30,
                            "one trace with the API's request and the worker's attempt")
        spans = receiver.trace(trace_id)
        names = {name for _, name in spans}
        assert any("/runs" in name for service, name in spans if service == "switchyard-api"), names
        assert any(name.startswith("apply_async/") for service, name in spans if service == "switchyard-api"), names
        assert any(name.startswith("POST") for service, name in spans if service == "switchyard-worker"), names
        for service in ("switchyard-api", "switchyard-worker"):  # their SQL, by the SQLAlchemy instrumentation
            assert any(name.split()[0] in ("SELECT", "INSERT", "WITH") for s, name in spans if s == service), names

        console = wait_for(lambda: [s for s in printed_spans(procs, "console-worker") if s["name"].startswith("run/")],
                           30, "the console worker to print its attempt's span")
        assert console[0]["context"]["trace_id"] == f"0x{trace_id}"
        by_service = {service: sum(1 for s, _ in spans if s == service) for service in {s for s, _ in spans}}
        print(f"\ntrace {trace_id}: {len(spans)} spans over OTLP by service {by_service}; "
              f"{len(console)} printed by the console worker")
    finally:
        procs.stop_all()


def printed_spans(procs: Processes, name: str) -> list[dict]:
    """The spans ConsoleSpanExporter printed to the process' output."""
    return [json.loads(chunk) for chunk in _json_objects(procs.log_tail(name, 2000)) if '"trace_id"' in chunk]


def _json_objects(text: str) -> list[str]:
    """The multi-line JSON objects ConsoleSpanExporter printed (each starts with '{' alone on a line)."""
    objects, current = [], None
    for line in text.splitlines():
        if line == "{":
            current = [line]
        elif current is not None:
            current.append(line)
            if line == "}":
                objects.append("\n".join(current))
                current = None
    return objects


def traced_api(procs: Processes, settings: Settings, receiver: Receiver, env: dict[str, str]) -> httpx.Client:
    """`switchyard api --dev` on a free port, exporting to ``receiver``; a client of it with an admin token."""
    port = free_port()
    with transaction(make_sessionmaker(make_engine(settings))) as session:
        token = repo.create_token(session, "traced", "admin", "tracing test")[1]
    procs.start("traced-api", "api", "--dev", "--no-reload", "--port", str(port),
                env={**otel_env(receiver, "switchyard-api"), **env})
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}/api/v1", headers={"Authorization": f"Bearer {token}"})

    def healthy() -> bool:
        try:
            return http.get("/healthz").status_code == 200
        except httpx.TransportError:
            return False

    wait_for(healthy, 60, "the traced API to answer")
    return http


def test_a_run_the_scheduler_starts_is_one_trace_across_three_processes(settings, tmp_path, receiver):
    """A rerun is started by the scheduler: the API's ring carries the request's trace, the scheduler's
    pass continues it and its step message carries it on to the worker. A database of the test's own
    and a wake queue of its own, so the session's scheduler takes no part."""
    queue = unique("traced")
    with fresh_database("switchyard_traced") as database_url:
        own = Settings(**{**settings.model_dump(), "database_url": database_url, "data_dir": tmp_path})
        # No sweep while the test runs: a sweep's pass that took the rerun between the API's commit and
        # its ring (sent after the commit, from the API's courier thread) would dispatch it in a trace of
        # its own, and the test would wait in vain (it did once in a full run, 1 s sweeps under load).
        env = {"SWITCHYARD_WAKE_QUEUE": f"{queue}.wake", "SWITCHYARD_SWEEP_INTERVAL_S": "60"}
        procs = Processes(own, tmp_path)
        try:
            http = traced_api(procs, own, receiver, env)
            procs.start("traced-scheduler", "scheduler", env={**otel_env(receiver, "switchyard-scheduler"), **env})
            procs.start("traced-worker", "worker", "--concurrency", "1", "-Q", queue,
                        env={**otel_env(receiver, "switchyard-worker"), **env})
            steps = [{"id": "ask", "type": "llm", "model": "openai/test-model", "prompt": "Hello", "queue": queue}]
            assert http.put("/workflows/traced", json={"name": "traced", "steps": steps}).status_code == 201
            first = http.post("/runs", json={"workflow_id": "traced", "input": {}}).json()["id"]
            wait_for(lambda: http.get(f"/runs/{first}").json()["status"] == "succeeded", 60, "the first run")
            rerun = http.post(f"/runs/{first}/rerun")
            assert rerun.status_code == 201, rerun.text
            run_id = rerun.json()["id"]
            wait_for(lambda: http.get(f"/runs/{run_id}").json()["status"] == "succeeded", 60, "the rerun")
            trace_id = wait_for(lambda: receiver.trace_with(("switchyard-api", "POST /api/v1/runs/<run_id>/"),
                                                            ("switchyard-scheduler", "scheduler pass"),
                                                            ("switchyard-worker", "run/")), 30,
                                "one trace with the API's control, the scheduler's pass and the worker's attempt")
        finally:
            procs.stop_all()
    spans = receiver.trace(trace_id)
    names = {name for _, name in spans}
    # The control's route, named by its rule (POST /api/v1/runs/<run_id>/<…:action>).
    assert any(name.startswith("POST /api/v1/runs/<run_id>/") for s, name in spans if s == "switchyard-api"), names
    assert ("switchyard-scheduler", "scheduler pass") in spans, names
    assert any(name.startswith("apply_async/") for service, name in spans if service == "switchyard-scheduler"), names
    assert any(name.startswith("run/") for service, name in spans if service == "switchyard-worker"), names
    print(f"\nrerun trace {trace_id}: {len(spans)} spans from {sorted({s for s, _ in spans})}")
