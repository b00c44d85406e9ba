"""Monitoring: the aggregates behind GET /metrics and /analytics (run counts, usage, time series,
step histograms over their rollups, errors, queues and worker heartbeats)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import and_, case, func, literal_column, select, union_all, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from orchestrator.db.models import Event, MetricRollup, MetricWatermark, Run, Step
from orchestrator.db.repository.common import LIVE_RUN, now
from orchestrator.db.types import bucket_start, seconds_between
from orchestrator.states import RunStatus, StepStatus

# --- monitoring: aggregates for GET /metrics and /analytics ---------------------------------------
# ``tenant_id=None`` means every tenant (the public metrics endpoint); otherwise one tenant's rows.
# The README's "Monitoring" section says which index serves each query.

DISPATCHED_TYPES = ("tool", "llm", "agent")


def _tenant_runs(query, tenant_id: str | None, join_from=None):
    if tenant_id is None:
        return query
    if join_from is not None:
        query = query.join(Run, Run.id == join_from)
    return query.where(Run.tenant_id == tenant_id)


def count_runs_by_status(
    session: Session, tenant_id: str | None, since: datetime | None = None, statuses: Iterable[str] | None = None
) -> dict[str, int]:
    """How many runs are in each status now (created at or after ``since``, in ``statuses``, if given)."""
    query = select(Run.status, func.count()).group_by(Run.status)
    query = _tenant_runs(query, tenant_id)
    if since is not None:
        query = query.where(Run.created_at >= since)
    if statuses is not None:
        query = query.where(Run.status.in_(list(statuses)))
    return {status: count for status, count in session.execute(query)}


USAGE_FIELDS = ("steps", "tool_calls", "llm_calls", "tokens_in", "tokens_out", "credits")
FINISHED_STEP = (StepStatus.SUCCEEDED, StepStatus.FAILED)


def sum_run_usage(session: Session, tenant_id: str, since: datetime) -> dict[str, float]:
    """The usage of the tenant's runs created at or after ``since``, summed field by field."""
    query = select(*[func.coalesce(func.sum(Run.usage[key].as_float()), 0.0) for key in USAGE_FIELDS]).where(
        Run.tenant_id == tenant_id, Run.created_at >= since
    )
    return dict(zip(USAGE_FIELDS, session.execute(query).one(), strict=True))


TIMESERIES = ("runs_started", "runs_succeeded", "runs_failed", "steps", "credits")


def timeseries(session: Session, tenant_id: str, metric: str, unit: str, since: datetime) -> dict[datetime, float]:
    """{bucket start: value} for one metric of the tenant, from ``since`` on; empty buckets are absent.

    runs_started counts runs by created_at; runs_succeeded and runs_failed count runs by completed_at;
    steps and credits sum the usage (finished steps, credits) of runs that ended, by completed_at.
    Every metric reads ``runs`` alone, through an index that starts with the tenant.
    """
    if metric == "runs_started":
        column, value, where = Run.created_at, func.count(), [Run.created_at >= since]
    elif metric in ("runs_succeeded", "runs_failed"):
        status = RunStatus.SUCCEEDED if metric == "runs_succeeded" else RunStatus.FAILED
        column, value, where = Run.completed_at, func.count(), [Run.status == status, Run.completed_at >= since]
    elif metric in ("credits", "steps"):
        terminal = [RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED]
        column = Run.completed_at
        value = func.coalesce(func.sum(Run.usage[metric].as_float()), 0.0)
        where = [Run.status.in_(terminal), Run.completed_at >= since]
    else:
        raise ValueError(f"unknown metric {metric!r}")
    bucket = bucket_start(column, unit).label("bucket")
    query = select(bucket, value).where(Run.tenant_id == tenant_id, *where).group_by(bucket)
    return {start: float(v) for start, v in session.execute(query)}


@dataclass(frozen=True)
class Histogram:
    """Cumulative bucket counts (``counts[i]`` = observations <= ``bounds[i]``), total count and sum."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    count: int
    total: float


# Histograms of finished steps, by step type: "duration" is the latest attempt's run time (started ->
# completed) of steps that succeeded or failed; "latency" the time from queued (ready) to started of
# dispatched steps. A step is observed when it finishes (completed_at), once per completion.
STEP_SERIES = ("duration", "latency")
ROLLUP_WATERMARK = "steps"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _series(series: str):
    if series == "duration":
        return (seconds_between(Step.started_at, Step.completed_at),
                [Step.status.in_(FINISHED_STEP), Step.started_at.is_not(None)])
    if series == "latency":
        return (seconds_between(Step.queued_at, Step.started_at),
                [Step.type.in_(DISPATCHED_TYPES), Step.queued_at.is_not(None), Step.started_at.is_not(None)])
    raise ValueError(f"unknown series {series!r}")


def le_label(bound: float) -> str:
    return repr(float(bound))


def _window(series: str, bounds: Sequence[float], after, upto=None, tenant_id: str | None = None):
    """Per tenant, step type and bucket: count and sum of the series over steps finished after ``after``
    (and at or before ``upto``). The bucket is a CASE of inline literals, the same text in GROUP BY."""
    value, conditions = _series(series)
    bucket = case(*[(value <= literal_column(le_label(b)), literal_column(f"'{le_label(b)}'")) for b in bounds],
                  else_=literal_column("'+Inf'"))
    query = (
        select(Run.tenant_id.label("tenant_id"), Step.type.label("step_type"), bucket.label("le"),
               func.count().label("n"), func.coalesce(func.sum(value), 0.0).label("total"))
        .join(Run, Run.id == Step.run_id)
        .where(Step.completed_at > after, *conditions)
        .group_by(Run.tenant_id, Step.type, bucket)
    )
    if upto is not None:
        query = query.where(Step.completed_at <= upto)
    if tenant_id is not None:
        query = query.where(Run.tenant_id == tenant_id)
    return query


def advance_step_rollups(session: Session, bounds: dict[str, Sequence[float]], lag_s: float) -> datetime:
    """Fold the steps finished between the watermark and ``lag_s`` ago into ``metric_rollups``; returns
    the new watermark, whose row stays locked until the transaction ends (so the caller reads rollups
    and newer steps that agree: no other process can move the watermark meanwhile).

    The lag leaves room for transactions still committing steps finished just before it.
    """
    session.execute(_upsert(session, MetricWatermark).values(name=ROLLUP_WATERMARK, upto=EPOCH)
                    .on_conflict_do_nothing(index_elements=["name"]))
    after = session.execute(
        select(MetricWatermark.upto).where(MetricWatermark.name == ROLLUP_WATERMARK).with_for_update()
    ).scalar_one()
    upto = now(session) - timedelta(seconds=lag_s)
    if upto <= after:
        return after
    for series in STEP_SERIES:
        rows = [dict(series=series, tenant_id=r.tenant_id, step_type=r.step_type, le=r.le, count=r.n, total=r.total)
                for r in session.execute(_window(series, bounds[series], after, upto))]
        if rows:
            insert_ = _upsert(session, MetricRollup).values(rows)
            session.execute(insert_.on_conflict_do_update(
                index_elements=["tenant_id", "series", "step_type", "le"],
                set_={"count": MetricRollup.count + insert_.excluded.count,
                      "total": MetricRollup.total + insert_.excluded.total},
            ))
    watermarks = MetricWatermark.__table__
    session.execute(update(watermarks).where(watermarks.c.name == ROLLUP_WATERMARK).values(upto=upto))
    return upto


def step_histograms(session: Session, tenant_id: str | None, series: str, bounds: Sequence[float],
                    watermark: datetime) -> dict[str, Histogram]:
    """One series' histogram per step type: the rollups plus the steps finished after ``watermark``
    (what advance_step_rollups returned in this transaction)."""
    tail = _window(series, bounds, watermark, tenant_id=tenant_id)
    rolled = select(MetricRollup.tenant_id, MetricRollup.step_type, MetricRollup.le,
                    MetricRollup.count.label("n"), MetricRollup.total).where(MetricRollup.series == series)
    if tenant_id is not None:
        rolled = rolled.where(MetricRollup.tenant_id == tenant_id)
    both = union_all(rolled, tail).subquery()
    rows = session.execute(
        select(both.c.step_type, both.c.le, func.sum(both.c.n), func.sum(both.c.total))
        .group_by(both.c.step_type, both.c.le)
    ).all()
    per_type: dict[str, dict[str, tuple[int, float]]] = {}
    for step_type, le, n, total in rows:
        per_type.setdefault(step_type, {})[le] = (int(n), float(total))
    result = {}
    for step_type, buckets in per_type.items():
        running, cumulative = 0, []
        for bound in bounds:
            running += buckets.get(le_label(bound), (0, 0.0))[0]
            cumulative.append(running)
        count = sum(n for n, _ in buckets.values())
        result[step_type] = Histogram(tuple(bounds), tuple(cumulative), count, sum(t for _, t in buckets.values()))
    return result


def _upsert(session: Session, table):
    """INSERT … ON CONFLICT for this session's backend (PostgreSQL and SQLite both have it)."""
    dialect = session.get_bind().dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


def count_step_errors(session: Session, tenant_id: str | None) -> dict[tuple[str, str, str], int]:
    """Attempts that failed, from the event log: {(event type, step type, error code): count} for
    ``step_retrying`` (retried) and ``step_failed`` (failed for good)."""
    code = Event.data[("error", "code")].as_string()
    query = (
        select(Event.type, Step.type, code, func.count())
        .join(Step, and_(Step.run_id == Event.run_id, Step.step_id == Event.step_id))
        .where(Event.type.in_(["step_retrying", "step_failed"]))
        .group_by(Event.type, Step.type, code)
    )
    query = _tenant_runs(query, tenant_id, join_from=Event.run_id)
    return {(kind, step_type, c or "unknown"): n for kind, step_type, c, n in session.execute(query)}


def step_queue_rates(session: Session, tenant_id: str, since: datetime) -> dict[str, dict[str, int]]:
    """Per queue, the tenant's steps queued and finished since ``since``: {queue: {"enqueued", "completed"}}
    (a step's latest attempt; ``ix_steps_queued`` and ``ix_steps_completed`` find them)."""
    result: dict[str, dict[str, int]] = {}
    for key, timestamp, extra in (("enqueued", Step.queued_at, Step.type.in_(DISPATCHED_TYPES)),
                                  ("completed", Step.completed_at, Step.status.in_(FINISHED_STEP))):
        query = (select(Step.queue, func.count()).join(Run, Run.id == Step.run_id)
                 .where(Run.tenant_id == tenant_id, timestamp >= since, extra).group_by(Step.queue))
        for queue, count in session.execute(query):
            result.setdefault(queue, {"enqueued": 0, "completed": 0})[key] = count
    return result


def live_step_queues(session: Session, tenant_id: str | None) -> set[str]:
    """The queues of dispatched steps in live runs (of one tenant, or of all when ``tenant_id`` is None)."""
    query = (select(Step.queue).distinct().join(Run, Run.id == Step.run_id)
             .where(Run.status.in_(list(LIVE_RUN)), Step.type.in_(DISPATCHED_TYPES)))
    if tenant_id is not None:
        query = query.where(Run.tenant_id == tenant_id)
    return set(session.execute(query).scalars())


def lease_heartbeats(session: Session) -> dict[str, datetime]:
    """{worker process ("host:pid"): its latest lease expiry} over running attempts (``ix_steps_lease``)."""
    query = (select(Step.worker, func.max(Step.lease_expires_at))
             .where(Step.lease_expires_at.is_not(None), Step.worker.is_not(None)).group_by(Step.worker))
    return {worker: expires for worker, expires in session.execute(query)}


def runs_of_tenant(session: Session, tenant_id: str, run_ids: Iterable[str]) -> set[str]:
    """Which of ``run_ids`` belong to the tenant."""
    run_ids = list(run_ids)
    if not run_ids:
        return set()
    return set(session.execute(select(Run.id).where(Run.id.in_(run_ids), Run.tenant_id == tenant_id)).scalars())
