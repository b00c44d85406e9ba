"""Concurrency keys through the scheduler on SQLite (the embedded default): the room a pass reads, the
waiters the look wakes when a holder ends, the diagnosis' facts and GET /queues' counts, all from the
repository's statements (orchestrator/db/repository/concurrency.py) on SQLite's JSON."""

from __future__ import annotations

import pytest
from sqlalchemy import update

from orchestrator import broker, diagnosis, service
from orchestrator.db.models import Run, Step
from orchestrator.db.repository import concurrency as concurrency_rows
from orchestrator.db.session import make_engine, make_sessionmaker, transaction
from orchestrator.scheduler import Scheduler

ECHO = {"id": "a", "type": "tool", "tool": "echo", "args": {"text": "x"}}
PER_CUSTOMER = {"name": "per-customer", "concurrency": {"key": "{{ input.customer }}", "limit": 1}, "steps": [ECHO]}
KEYED_STEP = {"name": "keyed-step", "steps": [{**ECHO, "concurrency": {"key": "vendor", "limit": 1}}]}


@pytest.fixture
def scheduler(sqlite_settings):
    engine = make_engine(sqlite_settings)
    scheduler = Scheduler(sqlite_settings, make_sessionmaker(engine), broker.make_celery(sqlite_settings))
    yield scheduler
    engine.dispose()


def start(scheduler: Scheduler, definition: dict, inputs: list[dict]) -> list[str]:
    with transaction(scheduler.sessions) as session:
        service.publish_workflow(session, scheduler.settings, "t", definition["name"], definition)
        return [service.start_run(session, scheduler.settings, "t", definition["name"], i).run.id for i in inputs]


def runs(scheduler: Scheduler, run_ids: list[str]) -> list[tuple[str, str | None]]:
    with transaction(scheduler.sessions) as session:
        return [(r.status, r.waiting_on) for r in (session.get(Run, i) for i in run_ids)]


def steps(scheduler: Scheduler, run_ids: list[str]) -> list[tuple[str, str | None, str | None]]:
    with transaction(scheduler.sessions) as session:
        return [(s.status, s.waiting_on, s.concurrency_key) for s in (session.get(Step, (i, "a")) for i in run_ids)]


def succeed(scheduler: Scheduler, run_id: str) -> None:
    """The run's step and the run end, as a worker's report of its last step leaves them."""
    with transaction(scheduler.sessions) as session:
        session.execute(update(Step).where(Step.run_id == run_id).values(status="succeeded"))
        session.execute(update(Run).where(Run.id == run_id).values(status="succeeded"))


def test_a_second_run_of_a_customer_waits_queued_and_the_look_wakes_it_when_the_first_ends(scheduler):
    first, second, other = start(scheduler, PER_CUSTOMER, [{"customer": "a"}, {"customer": "a"}, {"customer": "b"}])
    scheduler.drain()
    assert runs(scheduler, [first, second, other]) == [("running", None), ("queued", "concurrency"), ("running", None)]
    with transaction(scheduler.sessions) as session:
        run = session.get(Run, second)
        definition = scheduler.catalog.get(session, (run.tenant_id, run.workflow_id, run.workflow_version))
        assert concurrency_rows.waits(session, run, definition) == [diagnosis.KeyWait(None, "a", 1, (first,))]
        assert concurrency_rows.key_report(session, "t")["workflow_keys"] == [
            {"workflow_id": "per-customer", "key": "a", "active": 1, "waiting": 1},
            {"workflow_id": "per-customer", "key": "b", "active": 1, "waiting": 0}]
    assert scheduler.wake_waiters() == 0 and scheduler.waiters_known  # no room yet: it still waits
    succeed(scheduler, first)
    assert scheduler.wake_waiters() == 1
    scheduler.drain()
    assert runs(scheduler, [second]) == [("running", None)]
    assert scheduler.wake_waiters() == 0 and not scheduler.waiters_known


def test_a_step_key_queues_one_attempt_at_a_time_across_runs(scheduler):
    first, second = start(scheduler, KEYED_STEP, [{}, {}])
    scheduler.drain()
    assert steps(scheduler, [first, second]) == [("queued", None, "t:vendor"), ("pending", "concurrency", "t:vendor")]
    with transaction(scheduler.sessions) as session:
        assert concurrency_rows.key_report(session, "t")["step_keys"] == [{"key": "vendor", "running": 1, "waiting": 1}]
    succeed(scheduler, first)
    assert scheduler.wake_waiters() == 1
    scheduler.drain()
    assert steps(scheduler, [second]) == [("queued", None, "t:vendor")]
