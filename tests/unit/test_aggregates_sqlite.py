"""The monitoring aggregates on SQLite (the embedded default), against a database migrated to head."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, insert, select, update

from orchestrator.db import migrate
from orchestrator.db import repository as repo
from orchestrator.db.models import Event, MetricRollup, Run, Step, Tenant, Workflow, WorkflowVersion
from orchestrator.db.session import make_engine, make_sessionmaker, transaction
from orchestrator.db.types import db_now
from orchestrator.settings import Settings

T0 = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)


@pytest.fixture
def sessions(tmp_path):
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'agg.db'}", data_dir=tmp_path)
    migrate.upgrade(settings)
    factory = make_sessionmaker(make_engine(settings))
    with transaction(factory) as session:
        _seed(session)
    return factory


def _run(run_id, tenant, status, created, completed, credits):
    return dict(id=run_id, tenant_id=tenant, workflow_id="wf", workflow_version=1, status=status, input={},
                usage={"steps": 1, "tool_calls": 1, "llm_calls": 0, "tokens_in": 0, "tokens_out": 0,
                       "credits": credits},
                trigger_type="api", created_at=created, completed_at=completed)


def _step(run_id, step_id, status, queued, started, completed, step_type="tool"):
    return dict(run_id=run_id, step_id=step_id, position=0, type=step_type, status=status, attempt=1,
                max_attempts=3, queue="steps", queued_at=queued, started_at=started, completed_at=completed)


def _seed(session):
    for tenant in ("a", "b"):
        session.execute(insert(Tenant).values(id=tenant, name=tenant))
        session.execute(insert(Workflow).values(tenant_id=tenant, id="wf", name="wf", kind="workflow",
                                                latest_version=1))
        session.execute(insert(WorkflowVersion).values(tenant_id=tenant, workflow_id="wf", version=1, definition={}))
    m = timedelta(minutes=1)
    session.execute(insert(Run), [
        _run("r1", "a", "succeeded", T0, T0 + 2 * m, 1.5),
        _run("r2", "a", "failed", T0 + 1 * m, T0 + 61 * m, 0.25),
        _run("r3", "a", "running", T0 + 62 * m, None, 0.0),
        _run("r4", "b", "succeeded", T0, T0 + m, 100.0),
    ])
    s = timedelta(seconds=1)
    session.execute(insert(Step), [
        _step("r1", "x", "succeeded", T0, T0 + 0.5 * s, T0 + 2.5 * s),          # 2 s, dispatched in 0.5 s
        _step("r2", "x", "failed", T0 + m, T0 + m + 3 * s, T0 + 61 * m),         # 3600 - 3 s
        _step("r3", "w", "waiting", T0 + 62 * m, T0 + 62 * m, None, "approval"),  # not dispatched
        _step("r4", "x", "succeeded", T0, T0 + s, T0 + 2 * s),
    ])
    session.execute(insert(Event), [
        dict(run_id="r2", seq=1, type="step_retrying", step_id="x", attempt=1, data={"error": {"code": "boom"}}),
        dict(run_id="r2", seq=2, type="step_failed", step_id="x", attempt=2, data={"error": {"code": "boom"}}),
        dict(run_id="r4", seq=1, type="step_retrying", step_id="x", attempt=1, data={"error": {"code": "boom"}}),
    ])


def test_runs_by_status_and_usage(sessions):
    with sessions() as session:
        assert repo.count_runs_by_status(session, "a") == {"succeeded": 1, "failed": 1, "running": 1}
        assert repo.count_runs_by_status(session, None)["succeeded"] == 2
        assert repo.count_runs_by_status(session, "a", since=T0 + timedelta(minutes=1)) == {"failed": 1, "running": 1}
        usage = repo.sum_run_usage(session, "a", T0)
        assert usage["credits"] == pytest.approx(1.75) and usage["steps"] == 3 and usage["tool_calls"] == 3


@pytest.mark.parametrize("metric, unit, expected", [
    # Tenant b's run r4 (also at T0) never counts for tenant a.
    ("runs_started", "minute", {T0: 1, T0 + timedelta(minutes=1): 1, T0 + timedelta(minutes=62): 1}),
    ("runs_started", "hour", {T0: 2, T0 + timedelta(hours=1): 1}),
    ("runs_started", "day", {T0.replace(hour=0): 3}),
    ("runs_succeeded", "minute", {T0 + timedelta(minutes=2): 1}),
    ("runs_failed", "hour", {T0 + timedelta(hours=1): 1}),
    ("steps", "hour", {T0: 1, T0 + timedelta(hours=1): 1}),
    ("credits", "hour", {T0: 1.5, T0 + timedelta(hours=1): 0.25}),
])
def test_timeseries_buckets(sessions, metric, unit, expected):
    with sessions() as session:
        points = repo.timeseries(session, "a", metric, unit, T0 - timedelta(days=1))
    assert points == pytest.approx(expected)


DURATION = (1.0, 2.5, 10.0, 7200.0)
LATENCY = (0.75, 5.0)


def histograms(sessions, lag_s=10**9):
    """As a scrape reads them; the default lag folds nothing (the watermark stays at the epoch)."""
    with transaction(sessions) as session:
        watermark = repo.advance_step_rollups(session, {"duration": DURATION, "latency": LATENCY}, lag_s)
        return (repo.step_histograms(session, "a", "duration", DURATION, watermark),
                repo.step_histograms(session, None, "latency", LATENCY, watermark))


def test_histograms_are_the_same_before_and_after_the_rollup_and_count_each_step_once(sessions):
    def check(lag_s=10**9):
        durations, latency = histograms(sessions, lag_s)
        assert durations["tool"].counts == (0, 1, 1, 2) and durations["tool"].count == 2
        assert durations["tool"].total == pytest.approx(2 + 3597, abs=0.01)
        # r3's approval step was never dispatched; tenant b's step counts where no tenant is asked for.
        assert set(latency) == {"tool"} and latency["tool"].counts == (1, 3) and latency["tool"].count == 3

    check()  # nothing rolled up yet: every step is read from the steps table
    for _ in range(2):  # the second advance finds nothing new and must not add anything again
        check(lag_s=60)
    with sessions() as session:
        assert session.execute(select(func.count()).select_from(MetricRollup)).scalar_one() > 0
    # A step finishing now (after the watermark) is added from the steps table.
    with transaction(sessions) as session:
        session.execute(insert(Step).values(_step("r3", "y", "succeeded", T0, T0, None)))
        session.execute(update(Step).where(Step.step_id == "y").values(
            started_at=db_now(-5), completed_at=db_now()))
    durations, _ = histograms(sessions, lag_s=60)
    assert durations["tool"].counts == (0, 1, 2, 3) and durations["tool"].count == 3


def test_error_counts(sessions):
    with sessions() as session:
        errors = repo.count_step_errors(session, "a")
        everyone = repo.count_step_errors(session, None)
    assert errors == {("step_retrying", "tool", "boom"): 1, ("step_failed", "tool", "boom"): 1}
    assert everyone[("step_retrying", "tool", "boom")] == 2


def test_without_pub_sub_streams_poll_the_database(sessions):
    """The embedded broker's path: a run's follower and the tenant's stream poll SQLite."""
    import threading

    from orchestrator import streams
    from orchestrator.db.repository import RunChanges
    from orchestrator.states import RunStatus

    def write(*types, finish=False):
        with transaction(sessions) as session:
            changes = RunChanges(repo.lock_run(session, "r3"), run_target=RunStatus.SUCCEEDED if finish else None)
            for kind in types:
                changes.event(kind, "w", 1)
            repo.apply_run_changes(session, changes)
            assert session.info[repo.WRITTEN_EVENTS][0]["status_changed"] is finish  # staged for a publisher

    settings = Settings(stream_poll_s=0.01, stream_keepalive_s=5)
    tenant = iter(streams.follow_tenant(None, sessions, settings, "a"))  # sees what is written from now on
    follow = iter(streams.follow_run(sessions, None, settings, "r3", 0))
    write("step_waiting")
    assert next(follow)["type"] == "step_waiting"  # caught up from the database
    # Written while the follower polls: it picks them up and ends, the run being terminal.
    later = threading.Timer(0.2, write, ("step_completed", "run_succeeded"), {"finish": True})
    later.start()
    assert [e["type"] for e in follow] == ["step_completed", "run_succeeded"]
    later.join()
    change = next(tenant)
    assert (change["run_id"], change["type"], change["status"]) == ("r3", "run_succeeded", "succeeded")


def test_a_stream_polls_when_redis_refuses_the_subscription(sessions):
    from orchestrator import streams

    unreachable = streams.Bus("redis://127.0.0.1:1/0")  # nothing listens on port 1
    follow = streams.follow_run(sessions, unreachable, Settings(stream_poll_s=0.01), "r1", 0)
    assert follow.subscription is None
    assert list(follow) == []  # r1 is terminal and has no events after 0: caught up, the stream ends
