"""The scheduler's looks for room on PostgreSQL (Scheduler.admit): between two looks no more than
SWITCHYARD_ADMIT_MAX_WAIT_S apart, the queues its last admission left held messages in are admitted into
without a look; a queue whose backlog began meanwhile waits for the next look, no longer than that."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select, update

from orchestrator import broker, service
from orchestrator.db.models import Step
from orchestrator.db.repository import admission as window_rows
from orchestrator.db.session import make_engine, make_sessionmaker, transaction
from orchestrator.messages import StepMessage
from orchestrator.scheduler import Scheduler
from orchestrator.settings import Settings
from tests.integration.conftest import fresh_database

pytestmark = pytest.mark.integration

FULL, OTHER, STRETCHED = "looks_full", "looks_other", "looks_stretched"  # queues no worker reads


def _one_step(queue: str) -> dict:
    return {"name": queue, "steps": [{"id": "a", "type": "tool", "tool": "echo", "args": {}, "queue": queue}]}


@pytest.fixture
def looks_db(tmp_path, settings):
    with fresh_database("switchyard_looks") as url:
        own = Settings(**{**settings.model_dump(), "database_url": url, "data_dir": tmp_path,
                          "queue_windows": {FULL: 1, OTHER: 5}, "dispatch_window": 2, "window_seconds": 1.0,
                          "window_max": 6})
        engine = make_engine(own)
        sessions = make_sessionmaker(engine)
        with transaction(sessions) as session:
            for queue in (FULL, OTHER, STRETCHED):
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


def _finish_admitted(sessions, queue: str) -> int:
    """The queue's admitted steps end, as their workers would end them: their places free."""
    with transaction(sessions) as session:
        return session.execute(update(Step).where(Step.queue == queue, Step.status == "queued", Step.held.is_(False))
                               .values(status="succeeded")).rowcount


def _in_window(sessions, queue: str) -> int:
    with sessions() as session:
        return session.execute(select(func.count()).select_from(Step).where(
            Step.queue == queue, Step.status == "queued", Step.held.is_(False))).scalar_one()


def test_a_draining_backlogs_window_is_stretched_to_its_drain_and_is_its_own_size_once_it_is_gone(looks_db):
    """STRETCHED's window is the default one, 2 places, stretched to one second of its drain
    (window_seconds) up to 6; a queue with a window of its own (SWITCHYARD_QUEUE_WINDOWS) keeps it. The
    time between looks is set back by half a second instead of waited for."""
    sessions, scheduler = looks_db
    _queued(sessions, STRETCHED, 2)
    _queued(sessions, STRETCHED, 2)
    for _ in range(23):
        _queued(sessions, STRETCHED, 0)
    assert scheduler.admit() == 0 and scheduler.held_queues == {STRETCHED}  # full: no drain known yet

    admitted = []
    for _ in range(4):  # each half second, the places admitted at the last look free again
        assert _finish_admitted(sessions, STRETCHED) == (admitted[-1] if admitted else 2)
        scheduler.last_look -= 0.5
        admitted.append(scheduler.admit())
        assert _in_window(sessions, STRETCHED) == admitted[-1]
    # 2 freed in 0.5 s: 4 a second, a window of 4 (one second's drain); then 4 freed: 8 a second,
    # smoothed to 5.2; then the most, 6.
    assert admitted == [2, 4, 5, 6], admitted
    assert scheduler.drain_rates[STRETCHED] > 6
    scheduler.drain_rates[OTHER] = 1000.0  # as fast a drain on a queue whose window is its own: kept at 5
    assert scheduler._stretched_windows() == {STRETCHED: 6}
    del scheduler.drain_rates[OTHER]

    _finish_admitted(sessions, STRETCHED)
    scheduler.last_look -= 0.5
    assert scheduler.admit() == 23 - sum(admitted) == 6  # the last ones, in the stretched window
    _finish_admitted(sessions, STRETCHED)
    assert scheduler.admit() == 0  # room, and nothing held: the backlog is gone
    assert scheduler.held_queues == set() and scheduler.drain_rates == {}
    assert scheduler._stretched_windows() == {}  # a new backlog starts at the window's own size
