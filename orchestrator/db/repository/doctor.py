"""The invariant checker's reads (``orchestrator.doctor``): rows that break what the engine promises
about runs, steps and the outbox. Read only; each query is bounded by ``limit`` and, given
``run_ids``, looks at those runs only."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, exists, or_, select, true
from sqlalchemy.orm import Session

from orchestrator.db.repository.common import OUTBOX, RUNS, STEPS
from orchestrator.db.types import db_now, seconds_between
from orchestrator.states import TERMINAL_RUN, RunStatus, StepStatus

_TERMINAL = [s.value for s in TERMINAL_RUN]
# A live run the scheduler or a worker should be moving (a paused one waits for its operator).
_MOVING_RUN = [RunStatus.QUEUED.value, RunStatus.RUNNING.value, RunStatus.WAITING.value]
_IN_FLIGHT = [StepStatus.QUEUED.value, StepStatus.RUNNING.value, StepStatus.RETRYING.value, StepStatus.WAITING.value]
# A step an ended run must not hold at all: a running one may finish after a graceful cancel.
_NEVER_IN_ENDED_RUN = [StepStatus.QUEUED.value, StepStatus.RETRYING.value, StepStatus.WAITING.value]


def steps_in_flight_of_ended_runs(session: Session, lease_grace_s: float, limit: int,
                                  run_ids: Sequence[str] | None = None) -> Sequence[Any]:
    """Steps queued, retrying or waiting in a succeeded, failed or cancelled run, and steps still
    running there whose lease expired more than ``lease_grace_s`` ago (a graceful cancel lets a
    running attempt finish, but a lost one must be reaped): run id, run status, step id, step status."""
    lost = and_(STEPS.c.status == StepStatus.RUNNING.value,
                or_(STEPS.c.lease_expires_at.is_(None), STEPS.c.lease_expires_at < db_now(-lease_grace_s)))
    return session.execute(
        select(RUNS.c.id.label("run_id"), RUNS.c.status.label("run_status"), STEPS.c.step_id, STEPS.c.status)
        .join(STEPS, STEPS.c.run_id == RUNS.c.id)
        .where(RUNS.c.status.in_(_TERMINAL), or_(STEPS.c.status.in_(_NEVER_IN_ENDED_RUN), lost), _of(RUNS.c.id, run_ids))
        .order_by(RUNS.c.id, STEPS.c.step_id).limit(limit)
    ).all()


def stalled_live_runs(session: Session, limit: int, run_ids: Sequence[str] | None = None) -> Sequence[Any]:
    """Queued, running or waiting runs nothing will move: no step in flight, no due time, no waiting
    reason and no work flagged for the scheduler: run id, status."""
    moving = exists().where(STEPS.c.run_id == RUNS.c.id,
                            or_(STEPS.c.status.in_(_IN_FLIGHT), STEPS.c.due_at.is_not(None)))
    return session.execute(
        select(RUNS.c.id.label("run_id"), RUNS.c.status)
        .where(RUNS.c.status.in_(_MOVING_RUN), RUNS.c.has_work.is_(False), RUNS.c.waiting_on.is_(None), ~moving,
               _of(RUNS.c.id, run_ids))
        .order_by(RUNS.c.id).limit(limit)
    ).all()


def overdue_leases(session: Session, grace_s: float, limit: int, run_ids: Sequence[str] | None = None
                   ) -> Sequence[Any]:
    """Steps of live runs still running more than ``grace_s`` after their lease expired (the sweep
    should have reclaimed them): run id, step id, attempt, seconds past the lease."""
    clock = db_now()
    return session.execute(
        select(STEPS.c.run_id, STEPS.c.step_id, STEPS.c.attempt,
               seconds_between(STEPS.c.lease_expires_at, clock).label("overdue_s"))
        .join(RUNS, RUNS.c.id == STEPS.c.run_id)
        .where(RUNS.c.status.not_in(_TERMINAL), STEPS.c.status == StepStatus.RUNNING.value,
               STEPS.c.lease_expires_at < db_now(-grace_s), _of(STEPS.c.run_id, run_ids))
        .order_by(STEPS.c.run_id, STEPS.c.step_id).limit(limit)
    ).all()


def old_outbox_rows(session: Session, older_than_s: float, limit: int, run_ids: Sequence[str] | None = None
                    ) -> Sequence[Any]:
    """Outbox rows not held for their window older than ``older_than_s`` (the sweep should have
    published and deleted them): id, run id, step id, attempt, age in seconds. A held row waits for
    room in its queue's window as long as the backlog ahead of it lasts."""
    return session.execute(
        select(OUTBOX.c.id, OUTBOX.c.run_id, OUTBOX.c.step_id, OUTBOX.c.attempt,
               seconds_between(OUTBOX.c.created_at, db_now()).label("age_s"))
        .where(OUTBOX.c.created_at < db_now(-older_than_s), OUTBOX.c.held.is_(False), _of(OUTBOX.c.run_id, run_ids))
        .order_by(OUTBOX.c.id).limit(limit)
    ).all()


def held_without_message(session: Session, limit: int, run_ids: Sequence[str] | None = None) -> Sequence[Any]:
    """Steps `queued` and held for their queue's window with no held outbox row of their attempt: the
    admission admits held rows, so nothing will ever send them (and the sweep's nets look only at steps
    not held): run id, step id, attempt, queue."""
    its_row = exists().where(OUTBOX.c.run_id == STEPS.c.run_id, OUTBOX.c.step_id == STEPS.c.step_id,
                             OUTBOX.c.attempt == STEPS.c.attempt, OUTBOX.c.held.is_(True))
    return session.execute(
        select(STEPS.c.run_id, STEPS.c.step_id, STEPS.c.attempt, STEPS.c.queue)
        .where(STEPS.c.status == StepStatus.QUEUED.value, STEPS.c.held.is_(True), ~its_row,
               _of(STEPS.c.run_id, run_ids))
        .order_by(STEPS.c.run_id, STEPS.c.step_id).limit(limit)
    ).all()


def _of(column, run_ids: Sequence[str] | None):
    """Only the runs ``run_ids``, if given."""
    return true() if run_ids is None else column.in_(list(run_ids))
