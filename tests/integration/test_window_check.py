"""A publisher's check of its queue's window on PostgreSQL (repository.admission.pass_or_hold): the common
case, where every message passes and nothing is to be written, is decided by a statement cheaper to
plan; otherwise, or while the queue has a backlog in this process, by the full statement that holds what
does not fit. Both must decide the same."""

from __future__ import annotations

import pytest
from psycopg.pq import TransactionStatus
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from orchestrator.db.repository import admission as window_rows
from tests.integration.test_window_races import QUEUE, check, races_db, start, step_and_row

pytestmark = pytest.mark.integration

__all__ = ["races_db"]  # the fixture, shared with the races' tests


@pytest.fixture(autouse=True)
def no_backlog_hint():
    window_rows._BACKLOGGED.discard(QUEUE)
    yield
    window_rows._BACKLOGGED.discard(QUEUE)


def test_messages_that_fit_pass_and_nothing_is_written(races_db):
    settings, sessions = races_db
    message = start(sessions)
    assert check(sessions, message, window=2) == 1
    assert step_and_row(sessions, message) == (False, False)
    assert QUEUE not in window_rows._BACKLOGGED


def test_what_does_not_fit_is_held_and_the_backlog_keeps_the_full_check_first(races_db):
    settings, sessions = races_db
    first, second, third, fourth = start(sessions), start(sessions), start(sessions), start(sessions)
    with sessions.begin() as session:  # two messages checked at once, with one place left for them (third and fourth hold two of three)
        passed = window_rows.pass_or_hold(session, QUEUE, [first, second], 3)
    assert passed == 1
    assert step_and_row(sessions, first) == (False, False)
    assert step_and_row(sessions, second) == (True, True)
    assert QUEUE in window_rows._BACKLOGGED
    # A held message waits in the database: the next check holds its message even with room left.
    assert check(sessions, third, window=32) == 0
    assert step_and_row(sessions, third) == (True, True)
    # So does a process that never saw the backlog (its cheap check finds the held rows).
    window_rows._BACKLOGGED.discard(QUEUE)
    assert check(sessions, fourth, window=32) == 0
    assert step_and_row(sessions, fourth) == (True, True)


def test_a_check_that_passes_everything_ends_the_backlog_hint(races_db):
    settings, sessions = races_db
    message = start(sessions)
    window_rows._BACKLOGGED.add(QUEUE)  # left by an earlier check in this process
    assert check(sessions, message, window=2) == 1
    assert step_and_row(sessions, message) == (False, False)
    assert QUEUE not in window_rows._BACKLOGGED


@pytest.fixture
def autocommit_session(races_db):
    """A session in autocommit on a connection of its own, as the publishers check on (their statements'
    sessions): the check writes its transaction out around the lock and the count."""
    settings, sessions = races_db
    with sessions.kw["bind"].connect() as connection:
        connection.execution_options(isolation_level="AUTOCOMMIT")
        with Session(bind=connection) as session:
            yield session


def test_a_check_in_autocommit_decides_as_in_a_transaction(races_db, autocommit_session):
    settings, sessions = races_db
    first, second = start(sessions), start(sessions)
    assert window_rows.pass_or_hold(autocommit_session, QUEUE, [first], 2) == 1
    assert window_rows.pass_or_hold(autocommit_session, QUEUE, [second], 1) == 0  # first holds the one place
    assert step_and_row(sessions, first) == (False, False)
    assert step_and_row(sessions, second) == (True, True)
    assert _status(autocommit_session) is TransactionStatus.IDLE  # committed: the lock is let go


def test_a_check_that_fails_raises_sqlalchemys_error_and_leaves_its_connection_usable(races_db, autocommit_session):
    """A publisher catches SQLAlchemy's errors (the rows stay for the sweep); a held connection must not
    be left in the check's failed transaction, or every later statement on it would fail."""
    settings, sessions = races_db
    message = start(sessions)
    autocommit_session.execute(text("SET statement_timeout = '200ms'"))
    with sessions() as holder, holder.begin():  # another publisher holds the queue's window
        holder.execute(text("SELECT pg_advisory_xact_lock(:space, hashtext(:queue))"),
                       {"space": window_rows.LOCK_SPACE, "queue": QUEUE})
        with pytest.raises(DBAPIError, match="statement timeout"):
            window_rows.pass_or_hold(autocommit_session, QUEUE, [message], 2)
        assert _status(autocommit_session) is TransactionStatus.IDLE
    assert window_rows.pass_or_hold(autocommit_session, QUEUE, [message], 2) == 1


def _status(session) -> TransactionStatus:
    return session.connection().connection.driver_connection.info.transaction_status
