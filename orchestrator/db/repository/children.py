"""Child runs (orchestrator/core/children.py): a parent's sub-run steps' children as its pass reads
them, waking a parent when a child ends, and the children an operator's control reaches."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from orchestrator.core.children import ChildFacts
from orchestrator.db.repository.common import LIVE_RUN, RUNS
from orchestrator.states import RunStatus


def flag_run(session: Session, run_id: str) -> None:
    """Flag a run with work for the scheduler (a child of it ended)."""
    session.execute(update(RUNS).where(RUNS.c.id == run_id, RUNS.c.has_work.is_(False)).values(has_work=True))


def child_facts(session: Session, run_id: str) -> dict[str, ChildFacts]:
    """The newest child run of each of the run's sub-run steps, by step id."""
    rows = session.execute(
        select(RUNS.c.parent_step_id, RUNS.c.id, RUNS.c.status, RUNS.c.output, RUNS.c.error)
        .where(RUNS.c.parent_run_id == run_id).order_by(RUNS.c.created_at, RUNS.c.id)
    ).all()
    return {row.parent_step_id: ChildFacts(row.id, RunStatus(row.status), row.output, row.error) for row in rows}


def child_run_ids(session: Session, run_id: str) -> list[str]:
    """The run's children, oldest first."""
    return list(session.execute(
        select(RUNS.c.id).where(RUNS.c.parent_run_id == run_id).order_by(RUNS.c.created_at, RUNS.c.id)
    ).scalars())


def live_children(session: Session, run_ids: Sequence[str]) -> list[str]:
    """The children of ``run_ids`` that have not ended (a control on their parent reaches them)."""
    return list(session.execute(
        select(RUNS.c.id).where(RUNS.c.parent_run_id.in_(list(run_ids)),
                                RUNS.c.status.in_([s.value for s in LIVE_RUN]))
    ).scalars())
