"""The worker's sessions on connections each thread keeps (HeldConnectionSessions), on PostgreSQL: one
connection per thread and kind, reused from step to step, and replaced after the server cut it; and
its sessions for single statements (AutocommitSessions): kept per thread, each statement committed on
its own, what they wrote handed on after every use."""

from __future__ import annotations

import signal
import threading
import uuid

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from orchestrator.db.models import Tenant
from orchestrator.db.session import (
    AutocommitSessions,
    HeldConnectionSessions,
    database_unavailable,
    first_row_on_driver,
    make_engine,
    make_sessionmaker,
    transaction,
)
from tests.integration.conftest import _libpq


@pytest.fixture
def held(settings):
    engine = make_engine(settings, pool_pre_ping=False)
    yield HeldConnectionSessions(make_sessionmaker(engine))
    engine.dispose()


def _backend(sessions) -> int:
    with transaction(sessions) as session:
        return session.execute(text("SELECT pg_backend_pid()")).scalar_one()


def _backend_on_driver(sessions) -> int:
    """As _backend, with the statement sent the way the claim is: on the driver, past SQLAlchemy."""
    with transaction(sessions) as session:
        return first_row_on_driver(session, "SELECT pg_backend_pid() AS pid", {}).pid


def test_a_thread_keeps_its_connection_and_another_thread_has_its_own(held):
    first = _backend(held)
    assert [_backend(held) for _ in range(3)] == [first] * 3
    other: list[int] = []
    thread = threading.Thread(target=lambda: other.append(_backend(held)))
    thread.start()
    thread.join(10)
    assert other and other[0] != first


@pytest.mark.parametrize("cut_statement", [_backend, _backend_on_driver], ids=["sqlalchemy", "driver"])
def test_a_connection_the_server_cut_fails_its_statement_and_the_next_session_has_a_new_one(held, settings,
                                                                                          cut_statement):
    first = _backend(held)
    assert _backend_on_driver(held) == first
    with psycopg.connect(_libpq(settings.resolved_database_url), autocommit=True) as admin:
        assert admin.execute("SELECT pg_terminate_backend(%s)", (first,)).fetchone()[0]
    with pytest.raises(DBAPIError) as failed:
        cut_statement(held)
    assert database_unavailable(failed.value)  # what the worker retries on (a claim, an outcome)
    second = _backend(held)
    assert second != first
    assert _backend(held) == second


@pytest.fixture
def autocommit(settings):
    engine = make_engine(settings, pool_pre_ping=False)
    yield AutocommitSessions(make_sessionmaker(engine.execution_options(isolation_level="AUTOCOMMIT")))
    engine.dispose()


@pytest.fixture
def probe_table(settings):
    name = f"autocommit_probe_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(_libpq(settings.resolved_database_url), autocommit=True) as admin:
        admin.execute(f"CREATE TABLE {name} (n int)")
        yield name
        admin.execute(f"DROP TABLE {name}")


def _count(settings, table: str) -> int:
    with psycopg.connect(_libpq(settings.resolved_database_url)) as other:
        return other.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def test_autocommit_sessions_keep_a_session_per_thread_whose_statements_commit_on_their_own(
        autocommit, settings, probe_table):
    used: list = []
    autocommit.after_use.append(used.append)
    with autocommit() as first:
        first.execute(text(f"INSERT INTO {probe_table} VALUES (1)"))
        assert _count(settings, probe_table) == 1  # seen from another connection before the use ended
    with autocommit() as second:
        assert second is first
        second.execute(text(f"INSERT INTO {probe_table} VALUES (2)"))
    assert used == [first, first]
    assert _count(settings, probe_table) == 2
    other: list = []
    thread = threading.Thread(target=lambda: other.append(_backend_of(autocommit)))
    thread.start()
    thread.join(10)
    assert other and other[0] != _backend_of(autocommit)


def _backend_of(autocommit: AutocommitSessions) -> int:
    with autocommit() as session:
        return session.execute(text("SELECT pg_backend_pid()")).scalar_one()


def test_orm_changes_left_in_an_autocommit_session_are_written_when_its_use_ends(autocommit, settings):
    tenant_id = f"autocommit-{uuid.uuid4().hex[:8]}"
    with autocommit() as session:
        session.add(Tenant(id=tenant_id, name=tenant_id))  # no flush: a commit would have written it
    with psycopg.connect(_libpq(settings.resolved_database_url), autocommit=True) as other:
        assert other.execute("DELETE FROM tenants WHERE id = %s", (tenant_id,)).rowcount == 1


def test_a_use_that_raised_hands_on_what_committed_and_the_next_use_has_a_new_session(
        autocommit, settings, probe_table):
    used: list = []
    autocommit.after_use.append(used.append)
    with pytest.raises(DBAPIError), autocommit() as failed:
        failed.execute(text(f"INSERT INTO {probe_table} VALUES (1)"))
        failed.execute(text("SELECT 1 / 0"))
    assert used == [failed]
    assert _count(settings, probe_table) == 1  # the first statement stays: it committed on its own
    with autocommit() as session:
        assert session is not failed
        assert session.execute(text(f"SELECT count(*) FROM {probe_table}")).scalar_one() == 1


def test_an_autocommit_session_whose_connection_the_server_cut_is_replaced(autocommit, settings):
    first = _backend_of(autocommit)
    with psycopg.connect(_libpq(settings.resolved_database_url), autocommit=True) as admin:
        assert admin.execute("SELECT pg_terminate_backend(%s)", (first,)).fetchone()[0]
    with pytest.raises(DBAPIError) as failed:
        _backend_of(autocommit)
    assert database_unavailable(failed.value)
    second = _backend_of(autocommit)
    assert second != first
    assert _backend_of(autocommit) == second


class _Interrupted(Exception):
    """Raised by a signal handler while a statement waits for its answer, as Celery's soft time limit
    (SoftTimeLimitExceeded, from SIGUSR1) is raised in whatever a worker's child is doing."""


@pytest.fixture
def interrupt_after():
    def raise_interrupted(*_):
        raise _Interrupted()

    previous = signal.signal(signal.SIGALRM, raise_interrupted)
    yield lambda seconds: signal.setitimer(signal.ITIMER_REAL, seconds)
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)


def _sleep_on_sqlalchemy(session) -> None:
    session.execute(text("SELECT pg_sleep(2)"))


def _sleep_on_driver(session) -> None:
    first_row_on_driver(session, "SELECT pg_sleep(2)", {})


@pytest.mark.parametrize("sleep", [_sleep_on_sqlalchemy, _sleep_on_driver], ids=["sqlalchemy", "driver"])
def test_a_statement_interrupted_mid_answer_raises_its_own_error_and_the_next_use_has_a_new_connection(
        autocommit, interrupt_after, sleep):
    # The connection is left in its command, the answer unread: kept, every later statement on it
    # would fail with "another command is already in progress", for good.
    first = _backend_of(autocommit)
    interrupt_after(0.2)
    with pytest.raises(_Interrupted), autocommit() as session:
        sleep(session)
    second = _backend_of(autocommit)
    assert second != first
    assert _backend_of(autocommit) == second


def test_a_held_connection_left_mid_command_is_replaced_by_the_next_session(held, interrupt_after):
    first = _backend(held)
    interrupt_after(0.2)
    with pytest.raises(Exception), transaction(held) as session:  # noqa: B017 - the rollback's error may chain it
        _sleep_on_driver(session)
    second = _backend(held)
    assert second != first
    assert _backend(held) == second


# AutocommitSessions.transaction: a transaction written out on the autocommit connection, its BEGIN sent
# with its first statement on the driver (the worker's outcome, which starts with its run's lock).


def _insert_on_driver(session, table: str, n: int) -> None:
    first_row_on_driver(session, f"INSERT INTO {table} VALUES (%(n)s) RETURNING n", {"n": n})


def _insert_on_sqlalchemy(session, table: str, n: int) -> None:
    session.execute(text(f"INSERT INTO {table} VALUES (:n)"), {"n": n})


@pytest.mark.parametrize("first", [_insert_on_driver, _insert_on_sqlalchemy], ids=["driver", "sqlalchemy"])
def test_a_written_out_transaction_commits_when_its_block_ends_and_not_before(autocommit, settings, probe_table,
                                                                              first):
    used: list = []
    autocommit.after_use.append(used.append)
    with autocommit.transaction() as session:
        first(session, probe_table, 1)
        _insert_on_sqlalchemy(session, probe_table, 2)
        _insert_on_driver(session, probe_table, 3)
        assert _count(settings, probe_table) == 0  # in a transaction from its first statement on
    assert _count(settings, probe_table) == 3
    assert used == [session]
    with autocommit() as after:  # the connection is back to statements that commit on their own
        assert after is session
        _insert_on_sqlalchemy(after, probe_table, 4)
        assert _count(settings, probe_table) == 4


def test_a_written_out_transactions_first_statement_on_the_driver_holds_its_locks_until_the_commit(
        autocommit, settings, probe_table):
    """The BEGIN went with the first statement (in its pipeline), not after it: the row it locked stays
    locked for another connection until the block ends."""
    with psycopg.connect(_libpq(settings.resolved_database_url), autocommit=True) as other:
        other.execute(f"INSERT INTO {probe_table} VALUES (1)")
        with autocommit.transaction() as session:
            assert first_row_on_driver(session, f"SELECT n FROM {probe_table} FOR UPDATE", {}).n == 1
            with pytest.raises(psycopg.errors.LockNotAvailable):
                other.execute(f"SELECT n FROM {probe_table} FOR UPDATE NOWAIT")
        assert other.execute(f"SELECT n FROM {probe_table} FOR UPDATE NOWAIT").fetchone() == (1,)


@pytest.mark.parametrize("failing", [
    lambda session: first_row_on_driver(session, "SELECT 1 / 0", {}),
    lambda session: session.execute(text("SELECT 1 / 0")),
    lambda session: (_ for _ in ()).throw(RuntimeError("the block's own error")),
], ids=["driver", "sqlalchemy", "python"])
def test_a_written_out_transaction_that_raises_writes_nothing_and_hands_on_no_events(autocommit, settings,
                                                                                     probe_table, failing):
    from orchestrator.db.repository.events import WRITTEN_EVENTS

    handed: list = []
    autocommit.after_use.append(lambda session: handed.append(session.info.get(WRITTEN_EVENTS)))
    with pytest.raises((DBAPIError, RuntimeError)), autocommit.transaction() as session:
        _insert_on_driver(session, probe_table, 1)
        session.info[WRITTEN_EVENTS] = ["an event the rolled-back insert wrote"]
        failing(session)
    assert handed == [None]
    assert _count(settings, probe_table) == 0
    with autocommit() as after:  # statements commit on their own again, outside any transaction
        _insert_on_sqlalchemy(after, probe_table, 2)
        assert _count(settings, probe_table) == 1


def test_a_written_out_transaction_that_sent_nothing_sends_no_commit(autocommit, settings):
    with autocommit.transaction() as session:
        pass
    with autocommit() as after:
        assert after is session
        driver = after.connection().connection.driver_connection
        assert driver.pgconn.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert after.execute(text("SELECT 1")).scalar_one() == 1
