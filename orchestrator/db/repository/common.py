"""What several of the repository's modules share: the live run statuses, the database's clock, the
run, step and event tables as Core objects, and status helpers."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from orchestrator.db.models import Event, Run, Step
from orchestrator.db.types import db_now
from orchestrator.states import RunStatus, StepStatus

LIVE_RUN = (RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.WAITING, RunStatus.PAUSED)


def now(session: Session) -> datetime:
    """The database's clock."""
    return session.execute(select(db_now())).scalar_one()


RUNS, STEPS, EVENTS = Run.__table__, Step.__table__, Event.__table__


def _sql_list(statuses: Iterable[StepStatus | RunStatus]) -> str:
    """Statuses as an SQL list of literals (they are enum values, never input)."""
    return ", ".join(f"'{status.value}'" for status in sorted(statuses))


_STEP_STATUSES = {status.value: status for status in StepStatus}
