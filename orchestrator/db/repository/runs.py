"""Runs: creating one with its steps and first events, and reading runs, their steps and their event log."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session, aliased

from orchestrator.db.models import Event, Run, Step
from orchestrator.db.repository.events import insert_events, stage_written
from orchestrator.states import RunStatus, StepStatus


def find_run_by_idempotency_key(session: Session, tenant_id: str, key: str) -> Run | None:
    return session.execute(
        select(Run).where(Run.tenant_id == tenant_id, Run.idempotency_key == key)
    ).scalar_one_or_none()


def insert_run(session: Session, run: Run, steps: list[Step], events: list[dict]) -> Run:
    """Insert a run with its steps and first events (run.last_seq is set from the events): its
    `run_created` and, if its start took the scheduler's first pass, that pass's events."""
    run.last_seq = len(events)
    session.add(run)
    session.flush()
    session.add_all(steps)
    rows = [dict(run_id=run.id, seq=i + 1, **e) for i, e in enumerate(events)]
    insert_events(session, rows)
    session.flush()
    # The log as the run lived it: created queued, then (a start that took the first pass) started.
    stage_written(session, run, rows[:1], previous_status=None, status=RunStatus.QUEUED.value, waiting_on=None,
                  status_changed=True)
    if rows[1:]:
        stage_written(session, run, rows[1:], previous_status=RunStatus.QUEUED.value, status=run.status,
                      waiting_on=run.waiting_on, status_changed=run.status != RunStatus.QUEUED.value)
    return run


def get_run(session: Session, tenant_id: str, run_id: str) -> Run | None:
    return session.execute(select(Run).where(Run.id == run_id, Run.tenant_id == tenant_id)).scalar_one_or_none()


def list_runs(
    session: Session,
    tenant_id: str,
    *,
    status: str | None,
    workflow_id: str | None,
    limit: int,
    before: tuple[datetime, str] | None,
    parent_run_id: str | None = None,
) -> Sequence[Run]:
    """Newest first, keyset-paginated on (created_at, id) so any page costs one index range scan."""
    query = select(Run).where(Run.tenant_id == tenant_id)
    if parent_run_id:
        query = query.where(Run.parent_run_id == parent_run_id)
    if status:
        query = query.where(Run.status == status)
    if workflow_id:
        query = query.where(Run.workflow_id == workflow_id)
    if before:
        created_at, run_id = before
        query = query.where(
            or_(Run.created_at < created_at, and_(Run.created_at == created_at, Run.id < run_id))
        )
    return session.execute(query.order_by(Run.created_at.desc(), Run.id.desc()).limit(limit)).scalars().all()


def run_steps(session: Session, run_id: str) -> Sequence[Step]:
    """The run's steps in definition order (a for-each step's items are not among them)."""
    return session.execute(
        select(Step).where(Step.run_id == run_id, Step.item_of.is_(None)).order_by(Step.position)
    ).scalars().all()


def run_step(session: Session, run_id: str, step_id: str) -> Step | None:
    return session.get(Step, (run_id, step_id))


def run_status(session: Session, run_id: str) -> str | None:
    return session.execute(select(Run.status).where(Run.id == run_id)).scalar_one_or_none()


# The run-level events, each with the status it moves its run to (core.vocabulary.RUN_STATUS_EVENTS).
STATUS_AFTER_EVENT = {
    "run_created": "queued", "run_started": "running", "run_running": "running", "run_resumed": "running",
    "run_waiting": "waiting", "run_paused": "paused", "run_succeeded": "succeeded", "run_failed": "failed",
    "run_cancelled": "cancelled", "run_retried": "queued",
}
RUN_STATUS_EVENTS = tuple(STATUS_AFTER_EVENT)


def run_status_events(session: Session, tenant_id: str, after: datetime, limit: int) -> list[dict]:
    """The tenant's run status changes written after ``after``, oldest first: for each run-level event,
    the status it moved its run to and the status before it (the one its run's previous run-level event
    moved it to; None for ``run_created``), as the publisher sends them on Redis.

    Only the embedded broker's tenant stream reads this (it has no pub/sub); it scans the event log,
    and finds each change's previous one by the run's primary key.
    """
    previous = aliased(Event)
    previous_type = (
        select(previous.type)
        .where(previous.run_id == Event.run_id, previous.seq < Event.seq, previous.type.in_(RUN_STATUS_EVENTS))
        .order_by(previous.seq.desc()).limit(1)
        .correlate(Event).scalar_subquery()
    )
    rows = session.execute(
        select(Event.run_id, Event.seq, Event.type, Event.data, Event.created_at, Run.workflow_id,
               previous_type.label("previous_type"))
        .join(Run, Run.id == Event.run_id)
        .where(Run.tenant_id == tenant_id, Event.type.in_(RUN_STATUS_EVENTS), Event.created_at > after)
        .order_by(Event.created_at, Event.seq).limit(limit)
    ).all()
    return [{"run_id": r.run_id, "workflow_id": r.workflow_id, "status": STATUS_AFTER_EVENT[r.type],
             "previous_status": STATUS_AFTER_EVENT.get(r.previous_type),
             "waiting_on": (r.data or {}).get("waiting_on") if r.type == "run_waiting" else None,
             "seq": r.seq, "type": r.type, "created_at": r.created_at} for r in rows]


def run_events(session: Session, run_id: str, after: int, limit: int) -> Sequence[Event]:
    return (
        session.execute(
            select(Event).where(Event.run_id == run_id, Event.seq > after).order_by(Event.seq).limit(limit)
        )
        .scalars()
        .all()
    )


def succeeded_outputs(session: Session, run_id: str) -> dict[str, Any]:
    rows = session.execute(
        select(Step.step_id, Step.output).where(Step.run_id == run_id, Step.status == StepStatus.SUCCEEDED,
                                                Step.item_of.is_(None))
    ).all()
    return {step_id: output for step_id, output in rows}
