"""Prometheus metrics computed from the database at scrape time.

Every number comes from the rows, not from counters kept in one process's memory, so any API
process behind a load balancer answers the same series, and a restart loses nothing. The step
histograms are cumulative: a scrape first folds the steps finished since the last one into
``metric_rollups`` (one process at a time), then reads the rollups plus the few newer steps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.core.vocabulary import EventType
from orchestrator.db import repository as repo
from orchestrator.db.repository import Histogram
from orchestrator.db.session import transaction
from orchestrator.states import RunStatus

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0)
BUCKETS = {"duration": DURATION_BUCKETS, "latency": LATENCY_BUCKETS}
# Steps finished longer ago than this are folded into the rollups at a scrape; newer ones are read
# from the steps table (the lag leaves room for transactions still committing older completions).
ROLLUP_LAG_S = 60.0


class DatabaseCollector:
    """A prometheus-client collector that reads runs, steps and events at each ``collect()``, and the
    depth of the queues in use from the broker (``depths``, given the queue names)."""

    def __init__(self, sessions: sessionmaker[Session], tenant_id: str | None, default_queue: str,
                 depths: Callable[[set[str]], dict[str, int | None]]):
        self.sessions, self.tenant_id = sessions, tenant_id
        self.default_queue, self.depths = default_queue, depths

    def collect(self) -> Iterator[Metric]:
        with transaction(self.sessions) as session:
            # Holds the watermark until the histograms are read: scrapes take turns, briefly.
            watermark = repo.advance_step_rollups(session, BUCKETS, ROLLUP_LAG_S)
            durations = repo.step_histograms(session, self.tenant_id, "duration", DURATION_BUCKETS, watermark)
            latencies = repo.step_histograms(session, self.tenant_id, "latency", LATENCY_BUCKETS, watermark)
        with self.sessions() as session:
            by_status = repo.count_runs_by_status(session, self.tenant_id)
            errors = repo.count_step_errors(session, self.tenant_id)
            queues = repo.live_step_queues(session, self.tenant_id) | {self.default_queue}
        depth = GaugeMetricFamily("switchyard_queue_depth", "Messages waiting in each step queue in use (broker).",
                                  labels=["queue"])
        for queue, count in sorted(self.depths(queues).items()):
            if count is not None:  # the broker did not answer: no sample rather than a wrong one
                depth.add_metric([queue], count)
        yield depth
        runs = GaugeMetricFamily("switchyard_runs", "Runs in each status now.", labels=["status"])
        for status in RunStatus:
            runs.add_metric([status.value], by_status.get(status.value, 0))
        yield runs
        yield _histogram_family(
            "switchyard_step_duration_seconds", "Run time of finished steps (latest attempt), by step type.", durations
        )
        yield _histogram_family(
            "switchyard_step_dispatch_latency_seconds",
            "Time from a step being queued by the scheduler to a worker starting it (latest attempt), by step type.",
            latencies,
        )
        retries = CounterMetricFamily(
            "switchyard_step_retries", "Step attempts that failed and were retried.", labels=["type", "code"]
        )
        failures = CounterMetricFamily(
            "switchyard_step_failures", "Steps that failed for good, by error code.", labels=["type", "code"]
        )
        for (kind, step_type, code), count in sorted(errors.items()):
            (retries if kind == EventType.STEP_RETRYING else failures).add_metric([step_type, code], count)
        yield retries
        yield failures
        yield self._purged()

    def _purged(self) -> Metric:
        """What the retention sweep deleted: the series above cover only the runs still kept."""
        with self.sessions() as session:
            purged = repo.purged_rows(session, self.tenant_id)
        family = CounterMetricFamily("switchyard_retention_purged_rows",
                                     "Rows the retention sweep deleted (runs past retention), by table.", labels=["table"])
        for table, count in sorted(purged.items()):
            family.add_metric([table], count)
        return family


def _histogram_family(name: str, doc: str, histograms: dict[str, Histogram]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=["type"])
    for step_type, h in sorted(histograms.items()):
        buckets = [(_le(bound), count) for bound, count in zip(h.bounds, h.counts, strict=True)]
        family.add_metric([step_type], buckets + [("+Inf", h.count)], sum_value=h.total)
    return family


def _le(bound: float) -> str:
    return repr(float(bound))


def render(collector: DatabaseCollector) -> bytes:
    """The Prometheus text exposition of what ``collector`` reads now."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return generate_latest(registry)
