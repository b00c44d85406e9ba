"""What several of the repository's modules share: the live run statuses, the database's clock, the
run, step and event tables as Core objects, and status helpers."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from orchestrator.db.models import Event, Outbox, Run, Step
from orchestrator.db.types import db_now
from orchestrator.states import RunStatus, StepStatus

LIVE_RUN = (RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.WAITING, RunStatus.PAUSED)


def now(session: Session) -> datetime:
    """The database's clock."""
    return session.execute(select(db_now())).scalar_one()


# The tables as SQLAlchemy Core objects: the guarded writes and the hot path's reads use these (their
# rows are plain tuples, never ORM objects), the ORM entities only read rows the API serialises.
RUNS, STEPS, EVENTS, OUTBOX = Run.__table__, Step.__table__, Event.__table__, Outbox.__table__


def sql_list(statuses: Iterable[StepStatus | RunStatus]) -> str:
    """Statuses as an SQL list of literals, sorted, for a statement written as text (they are enum
    values of the transition table, never input, so they are safe to format in)."""
    return ", ".join(f"'{status.value}'" for status in sorted(statuses))


# A step's status as read from a row (its stored string), by value.
STEP_STATUSES = {status.value: status for status in StepStatus}
