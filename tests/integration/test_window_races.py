"""Two publishers of one step message, interleaved by hand on real PostgreSQL: the sweep republishes an
outbox row it finds older than the republish delay while the publisher that committed it is still
sending it (its publish slow through a Redis restart, or its delete not made yet). Whatever the order,
a step held for its queue's window keeps a held outbox row, which the admission needs to send it.

Found by the chaos scenario (`test_chaos.py`: one run in about four stayed `running` for good, its first
step `queued`, held, with no outbox row: the sweep's check had held the message, then its first
publisher deleted the row as published; and the message, sent just before Redis restarted, was lost).
"""

from __future__ import annotations

import pytest
from sqlalchemy import insert, select

from orchestrator import admission, service
from orchestrator.db import repository as repo
from orchestrator.db.models import Outbox, Step
from orchestrator.db.repository import admission as window_rows
from orchestrator.db.session import make_engine, make_sessionmaker, transaction
from orchestrator.doctor import HELD_WITHOUT_MESSAGE, find_violations
from orchestrator.messages import StepMessage
from orchestrator.settings import Settings
from tests.integration.conftest import fresh_database

pytestmark = pytest.mark.integration

QUEUE = "races"
ONE_STEP = {"name": "one", "steps": [{"id": "a", "type": "tool", "tool": "echo", "args": {}, "queue": QUEUE}]}


@pytest.fixture
def races_db(tmp_path, settings):
    with fresh_database("switchyard_races") as url:
        own = Settings(**{**settings.model_dump(), "database_url": url, "data_dir": tmp_path,
                          "queue_windows": {QUEUE: 1}})
        engine = make_engine(own)
        sessions = make_sessionmaker(engine)
        with transaction(sessions) as session:
            service.publish_workflow(session, Settings(), "races", "one", ONE_STEP)
        yield own, sessions
        engine.dispose()


def start(sessions) -> StepMessage:
    """A run whose first step is committed `queued` (holding a place in the window) with its outbox
    row, not yet published."""
    with transaction(sessions) as session:
        [message] = service.start_run(session, Settings(), "races", "one", {}, first_pass=True).messages
    assert message.outbox_id is not None
    return message


def check(sessions, message: StepMessage, window: int) -> int:
    """A publisher's check of the window for ``message``: how many pass (0: held)."""
    with transaction(sessions) as session:
        return window_rows.pass_or_hold(session, QUEUE, [message], window)


def step_and_row(sessions, message: StepMessage) -> tuple[bool, bool | None]:
    """Whether the message's step is held, and whether its outbox row is (None: no row)."""
    with sessions() as session:
        step_held = session.execute(select(Step.held).where(
            Step.run_id == message.run_id, Step.step_id == message.step_id)).scalar_one()
        row_held = session.execute(select(Outbox.held).where(Outbox.id == message.outbox_id)).scalar_one_or_none()
    return step_held, row_held


def held_without_message(settings, sessions) -> list[str]:
    with sessions() as session:
        return [v.run_id for v in find_violations(session, settings) if v.kind == HELD_WITHOUT_MESSAGE]


def test_a_row_held_by_the_sweep_while_its_publisher_sends_it_is_kept_for_the_admission(races_db):
    settings, sessions = races_db
    # The first publisher's check passes its message (an empty window of 1) and it sends it, slowly.
    first = start(sessions)
    assert check(sessions, first, window=1) == 1
    # A second run's step takes a place as it is committed; then the sweep finds the first row old and
    # checks it again: the window is full, so it is held, the step with it.
    second = start(sessions)
    assert check(sessions, first, window=1) == 0
    assert step_and_row(sessions, first) == (True, True)
    # The first publisher's send ends: it deletes the rows it published. The held row stays.
    with transaction(sessions) as session:
        repo.delete_outbox(session, [first.outbox_id])
    assert step_and_row(sessions, first) == (True, True)
    assert held_without_message(settings, sessions) == []
    # Once the second step left the window (it ran), the admission sends the held message again: the
    # copy already sent, if it was not lost, is dropped by the workers' claim guard.
    with transaction(sessions) as session:
        session.execute(Step.__table__.update().where(Step.run_id == second.run_id).values(status="succeeded"))
    done = admission.admit_backlog(sessions, settings)
    assert [(m.run_id, m.step_id, m.attempt) for m in done.messages] == [(first.run_id, "a", first.attempt)]
    assert step_and_row(sessions, first) == (False, False)


def test_a_check_of_a_message_whose_row_its_publisher_deleted_meanwhile_holds_nothing(races_db):
    settings, sessions = races_db
    first = start(sessions)
    assert check(sessions, first, window=1) == 1
    start(sessions)  # the window's one place is taken
    # The sweep read the first row as old; before its check, the first publisher sent the message and
    # deleted the row. The check finds the window full, but there is no row left to hold: the step
    # is not held (its message is in the broker, or the sweep's lost-message nets find it).
    with transaction(sessions) as session:
        repo.delete_outbox(session, [first.outbox_id])
    assert check(sessions, first, window=1) == 0
    assert step_and_row(sessions, first) == (False, None)
    assert held_without_message(settings, sessions) == []


def test_a_check_of_a_message_whose_step_a_worker_took_meanwhile_leaves_the_step_running(races_db):
    settings, sessions = races_db
    first = start(sessions)
    assert check(sessions, first, window=1) == 1
    start(sessions)
    with transaction(sessions) as session:  # a worker claimed the first step from its first copy
        session.execute(Step.__table__.update().where(Step.run_id == first.run_id).values(status="running"))
    assert check(sessions, first, window=1) == 0
    step_held, row_held = step_and_row(sessions, first)
    assert not step_held, "a running step marked held would give up its place in the window"
    assert row_held  # an orphan the admission (or the sweep's tidy-up) deletes when it comes to it
    assert admission.admit_backlog(sessions, Settings(**{**settings.model_dump(), "queue_windows": {QUEUE: 5}})
                                   ).messages == []
    assert step_and_row(sessions, first) == (False, None)


def test_the_doctor_names_a_held_step_that_has_no_held_row(races_db):
    settings, sessions = races_db
    message = start(sessions)
    with transaction(sessions) as session:  # the state the race used to leave, written by hand
        session.execute(Step.__table__.update().where(Step.run_id == message.run_id).values(held=True))
        repo.delete_outbox(session, [message.outbox_id])
    assert held_without_message(settings, sessions) == [message.run_id]
    with transaction(sessions) as session:  # a held row of another attempt does not count
        session.execute(insert(Outbox).values(run_id=message.run_id, step_id="a", attempt=message.attempt + 1,
                                              queue=QUEUE, soft_time_limit=60, held=True))
    assert held_without_message(settings, sessions) == [message.run_id]
