"""The worker's own Prometheus metrics, in prometheus-client's multiprocess mode.

Prefork children each write their samples to files in ``SWITCHYARD_METRICS_DIR``; the worker's main
process serves them, summed, on ``SWITCHYARD_WORKER_METRICS_PORT``. Off (every call a no-op) unless
the directory is set. The API's ``GET /metrics`` stays the installation-wide view from the database;
these are the live, per-worker ones.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from celery import signals

from orchestrator.settings import Settings

USAGE_KINDS = ("llm_calls", "tokens_in", "tokens_out", "tool_calls")
BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)

_folder: Path | None = None
_metrics: dict[str, Any] = {}


def serve(settings: Settings) -> None:
    """In the worker's main process, before any child is forked: empty the directory, point
    prometheus-client at it, and serve the summed samples on the configured port."""
    global _folder
    if settings.metrics_dir is None:
        return
    _folder = Path(settings.metrics_dir).resolve()
    _folder.mkdir(parents=True, exist_ok=True)
    for stale in _folder.glob("*.db"):  # files of a previous worker would be summed in
        stale.unlink()
    # prometheus-client reads its multiprocess directory from this variable when it is imported,
    # and offers no other way: set it before the first import in this process and its children.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(_folder)
    from prometheus_client import CollectorRegistry, multiprocess, start_http_server

    signals.worker_process_shutdown.connect(_child_exited, weak=False)
    if settings.worker_metrics_port:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(_folder))
        start_http_server(settings.worker_metrics_port, addr=settings.worker_metrics_host, registry=registry)


def _child_exited(pid=None, **_kwargs) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid or os.getpid(), str(_folder))


def _built() -> dict[str, Any]:
    """The metric objects, made on first use in each process (after serve() set the directory)."""
    if not _metrics:
        from prometheus_client import Counter, Gauge, Histogram

        _metrics.update(
            attempts=Counter("switchyard_worker_attempts", "Step attempts this worker ran, by step type and result.",
                             ["type", "result"]),
            duration=Histogram("switchyard_worker_attempt_duration_seconds",
                               "Run time of step attempts on this worker, by step type.", ["type"], buckets=BUCKETS),
            running=Gauge("switchyard_worker_attempts_in_progress", "Step attempts running now, by step type.",
                          ["type"], multiprocess_mode="livesum"),
            usage=Counter("switchyard_worker_usage", "Usage of the attempts this worker ran (LLM calls, tokens, "
                          "tool calls).", ["kind"]),
        )
    return _metrics


@contextmanager
def attempt(step_type: str) -> Iterator[None]:
    """Count an attempt as in progress for the duration of the block."""
    if _folder is None:
        yield
        return
    running = _built()["running"].labels(step_type)
    running.inc()
    try:
        yield
    finally:
        running.dec()


def finished(step_type: str, result: str, duration_s: float, usage: dict[str, float]) -> None:
    """Record one attempt's end: its result (succeeded, failed, waiting), run time and usage."""
    if _folder is None:
        return
    found = _built()
    found["attempts"].labels(step_type, result).inc()
    found["duration"].labels(step_type).observe(duration_s)
    for kind in USAGE_KINDS:
        if usage.get(kind):
            found["usage"].labels(kind).inc(usage[kind])
