"""The scheduler's looks for room on PostgreSQL (Scheduler.admit): between two looks no more than
SWITCHYARD_ADMIT_MAX_WAIT_S apart, the queues its last admission left held messages in are admitted into
without a look; a queue whose backlog began meanwhile waits for the next look, no longer than that."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from orchestrator import broker, service
from orchestrator.db.models import Step
from orchestrator.db.repository import admission as window_rows
from orchestrator.db.session import make_engine, make_sessionmaker, transaction
from orchestrator.messages import StepMessage
from orchestrator.scheduler import Scheduler
from orchestrator.settings import Settings
from tests.integration.conftest import fresh_database

pytestmark = pytest.mark.integration

FULL, OTHER = "looks_full", "looks_other"  # queues no worker reads


def _one_step(queue: str) -> dict:
    return {"name": queue, "steps": [{"id": "a", "type": "tool", "tool": "echo", "args": {}, "queue": queue}]}


@pytest.fixture
def looks_db(tmp_path, settings):
    with fresh_database("switchyard_looks") as url:
        own = Settings(**{**settings.model_dump(), "database_url": url, "data_dir": tmp_path,
                          "queue_windows": {FULL: 1, OTHER: 5}})
        engine = make_engine(own)
        sessions = make_sessionmaker(engine)
        with transaction(sessions) as session:
            for queue in (FULL, OTHER):
                service.publish_workflow(session, Settings(), "looks", queue, _one_step(queue))
        scheduler = Scheduler(own, sessions, broker.make_celery(own))
        yield sessions, scheduler
        scheduler.statements.close()
        engine.dispose()


def _queued(sessions, queue: str, window: int) -> StepMessage:
    """A run whose first step is queued, its message checked against a window of ``window`` places."""
    with transaction(sessions) as session:
        [message] = service.start_run(session, Settings(), "looks", queue, {}, first_pass=True).messages
    with transaction(sessions) as session:
        assert window_rows.pass_or_hold(session, queue, [message], window) == min(window, 1)
    return message


def _is_held(sessions, message: StepMessage) -> bool:
    with sessions() as session:
        return session.execute(select(Step.held).where(Step.run_id == message.run_id,
                                                       Step.step_id == message.step_id)).scalar_one()


def test_a_known_backlog_is_admitted_into_without_a_look_and_a_new_one_waits_for_the_next(looks_db):
    sessions, scheduler = looks_db
    _queued(sessions, FULL, 1)  # takes the one place of FULL's window
    _queued(sessions, FULL, 0)  # held
    assert scheduler.admit() == 0  # a look: FULL has a backlog, and no room
    assert scheduler.held_queues == {FULL}

    waiting = _queued(sessions, OTHER, 0)  # a backlog begins in a queue with room, after the look
    assert scheduler.admit() == 0  # FULL admitted into without a look: OTHER is not seen
    assert _is_held(sessions, waiting)

    scheduler.last_full_look -= scheduler.settings.admit_max_wait_s  # the last look is too old now
    assert scheduler.admit() == 1
    assert not _is_held(sessions, waiting)
