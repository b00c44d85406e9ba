"""The worker's sessions on connections each thread keeps (HeldConnectionSessions), on PostgreSQL: one
connection per thread and kind, reused from step to step, and replaced after the server cut it."""

from __future__ import annotations

import threading

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from orchestrator.db.session import (
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
