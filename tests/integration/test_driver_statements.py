"""Statements compiled by SQLAlchemy and run straight on psycopg (orchestrator/db/session.py,
``CompiledOnDriver``): the run's statement that ends every outcome goes this way. What they write and
answer must be what SQLAlchemy's own execution of the same statement writes and answers: JSON
values wrapped as SQLAlchemy wraps them, the statement's own literals bound, errors raised as
SQLAlchemy's."""

from __future__ import annotations

from datetime import UTC

import pytest
from sqlalchemy import bindparam, select, text, update
from sqlalchemy.exc import DBAPIError

from orchestrator import service
from orchestrator.db.models import Run
from orchestrator.db.repository.common import RUNS
from orchestrator.db.session import (
    CompiledOnDriver,
    make_engine,
    make_sessionmaker,
    rows_on_driver,
    transaction,
)
from orchestrator.db.types import db_now
from orchestrator.settings import Settings
from tests.integration.conftest import fresh_database

pytestmark = pytest.mark.integration

ONE_STEP = {"name": "one", "steps": [{"id": "a", "type": "tool", "tool": "echo", "args": {}}]}
# A JSON value with what a naive encoding gets wrong: nesting, unicode, None, a float.
OUTPUT = {"a": {"text": "naïve — ✓", "items": [1, 2.5, None, {"k": "v"}], "empty": {}}}

FINISH = (update(RUNS).where(RUNS.c.id == bindparam("of_run"), RUNS.c.status == "running")
          .values(output=bindparam("output", type_=RUNS.c.output.type), completed_at=db_now())
          .returning(RUNS.c.id, RUNS.c.output, RUNS.c.completed_at))


@pytest.fixture
def sessions(tmp_path, settings):
    with fresh_database("switchyard_driver") as url:
        engine = make_engine(Settings(**{**settings.model_dump(), "database_url": url, "data_dir": tmp_path}))
        yield make_sessionmaker(engine)
        engine.dispose()


def runs(sessions, n: int, status: str = "running") -> list[str]:
    with transaction(sessions) as session:
        service.publish_workflow(session, Settings(), "t", "one", ONE_STEP)
        ids = [service.start_run(session, Settings(), "t", "one", {}).run.id for _ in range(n)]
        session.execute(update(Run).where(Run.id.in_(ids)).values(status=status))
    return ids


def test_a_statement_on_the_driver_writes_and_answers_what_sqlalchemy_does(sessions):
    by_sqlalchemy, on_driver = runs(sessions, 2)
    with transaction(sessions) as session:
        # psycopg answers timestamps in the connection's time zone; SQLAlchemy's UTCDateTime in UTC.
        session.execute(text("SET LOCAL TIME ZONE 'Asia/Kolkata'"))
        answered = {"sqlalchemy": session.execute(FINISH, {"of_run": by_sqlalchemy, "output": OUTPUT}).one()}
        compiled = CompiledOnDriver(FINISH)
        [answered["driver"]] = rows_on_driver(session, compiled, {"of_run": on_driver, "output": OUTPUT})
    assert answered["driver"].output == answered["sqlalchemy"].output == OUTPUT
    assert answered["driver"].completed_at.tzinfo == answered["sqlalchemy"].completed_at.tzinfo == UTC
    with sessions() as session:
        stored = dict(session.execute(select(Run.id, Run.output).where(Run.id.in_([by_sqlalchemy, on_driver]))).all())
    assert stored == {by_sqlalchemy: OUTPUT, on_driver: OUTPUT}


def test_the_statements_own_literals_are_bound(sessions):
    """The guard's 'running' is a value SQLAlchemy binds itself, not one of the caller's parameters."""
    [paused] = runs(sessions, 1, status="paused")
    with transaction(sessions) as session:
        compiled = CompiledOnDriver(FINISH)
        assert rows_on_driver(session, compiled, {"of_run": paused, "output": OUTPUT}) == []
    with sessions() as session:
        assert session.execute(select(Run.output).where(Run.id == paused)).scalar_one() is None


def test_an_error_on_the_driver_is_sqlalchemys_and_the_session_can_roll_back(sessions):
    [run_id] = runs(sessions, 1)
    with sessions() as session:
        rows_on_driver(session, CompiledOnDriver(FINISH), {"of_run": run_id, "output": OUTPUT})
        with pytest.raises(DBAPIError, match="division by zero"):
            rows_on_driver(session, CompiledOnDriver(text("SELECT 1 / :zero")), {"zero": 0})
        session.rollback()  # the failed transaction is undone whole, the run's update with it
        assert session.execute(select(Run.output).where(Run.id == run_id)).scalar_one() is None
