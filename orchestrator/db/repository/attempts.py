"""The worker's side of an attempt: claiming it (``lock_run_and_claim``: on PostgreSQL in one
statement) and extending its lease."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC
from types import SimpleNamespace
from typing import Any

from psycopg.types.json import Jsonb
from sqlalchemy import update
from sqlalchemy.orm import Session

from orchestrator.core.snapshot import RunState, StepState
from orchestrator.db.repository.changes import CLAIM_RUN_COLUMNS, OUTCOME_RUN_COLUMNS, RunRow, lock_run
from orchestrator.db.repository.common import STEPS, sql_list
from orchestrator.db.repository.events import stage_written
from orchestrator.db.repository.run_changes import RunChanges, apply_run_changes
from orchestrator.db.session import first_row_on_driver, send_first_row_on_driver
from orchestrator.db.types import db_now
from orchestrator.states import RunStatus, StepStatus, step_allowed_from


@dataclass
class Claimed:
    """What ``lock_run_and_claim`` found and did: the run as locked (with ``tenant_policy``; on
    PostgreSQL only the columns a claim reads, CLAIM_RUN_COLUMNS) and, if the step was claimed, its
    checkpoint and (on PostgreSQL) the run and the step as the claim left them (``seen``: not locked,
    its ``last_seq`` the claim's own ``step_started`` event's)."""

    run: RunRow
    claimed: bool
    checkpoint: dict | None = None
    seen: RunState | None = None
    item_value: Any = None  # a for-each item's value


# The run statuses in which a step may be claimed.
CLAIMABLE_RUN = (RunStatus.RUNNING, RunStatus.WAITING)


# The claim on PostgreSQL, in one statement: lock the run, move the step queued -> running at this
# attempt if the run is running or waiting, bump the run's last_seq and append `step_started`.
# `run` is evaluated first (the UPDATE of steps reads it), so the run's row is locked before the
# step's, the order every writer keeps. The run's columns come from the locked row as it was before
# the statement's own changes.
# The package's one statement written as raw SQL for the driver, on purpose: it is the worker's step
# between two tasks, measured by the round-trip census (tests/bench/census.py), and sent straight on
# the psycopg connection, prepared (first_row_on_driver, hence psycopg's %(name)s placeholders), it
# skips SQLAlchemy's execution (statement cache, parameter and result processing), which costs about
# five times the client CPU of psycopg's. The allowed statuses are enum constants of the transition
# table, formatted in once.
_CLAIM_PG = """
WITH run AS (
    SELECT * FROM runs WHERE id = %(run_id)s FOR UPDATE
), claimed AS (
    UPDATE steps SET status = 'running', started_at = clock_timestamp(), worker = %(worker)s,
        lease_expires_at = clock_timestamp() + make_interval(secs => %(lease_s)s)
    WHERE run_id = %(run_id)s AND step_id = %(step_id)s AND attempt = %(attempt)s AND status IN ({from_steps})
      AND EXISTS (SELECT 1 FROM run WHERE status IN ({from_runs}))
    RETURNING checkpoint, type, max_attempts, queue, policy, item_value
), bumped AS (
    UPDATE runs SET last_seq = runs.last_seq + 1 FROM claimed WHERE runs.id = %(run_id)s RETURNING runs.last_seq
), started AS (
    INSERT INTO events (run_id, seq, type, step_id, attempt, data, created_at)
    SELECT %(run_id)s, last_seq, 'step_started', %(step_id)s, %(attempt)s, %(data)s, clock_timestamp() FROM bumped
    RETURNING seq, created_at
){forget}
SELECT {run_columns}, (SELECT policy FROM tenants WHERE tenants.id = run.tenant_id) AS tenant_policy,
       claimed.checkpoint AS claimed_checkpoint, claimed.type AS claimed_type,
       claimed.max_attempts AS claimed_max_attempts, claimed.queue AS claimed_queue, claimed.policy AS claimed_policy,
       claimed.item_value AS claimed_item_value,
       started.seq AS started_seq, started.created_at AS started_created_at
FROM run LEFT JOIN claimed ON true LEFT JOIN started ON true
"""
_CLAIM_FORMAT = dict(
    run_columns=", ".join(f"run.{name}" for name in CLAIM_RUN_COLUMNS),
    # The guards' allowed sets are constants of the transition table: written into the statement.
    from_steps=sql_list(step_allowed_from(StepStatus.RUNNING) & {StepStatus.QUEUED}),
    from_runs=sql_list(CLAIMABLE_RUN),
)
# An eager step's claim also deletes its outbox row (workers/tasks.py): its message was never sent, the
# claim takes its place. A statement of its own: the delete's index scan cost every other claim buffers.
_CLAIM_EAGER_PG = _CLAIM_PG.format(**_CLAIM_FORMAT, forget=", forgotten AS (DELETE FROM outbox WHERE id = %(outbox_id)s)")
_CLAIM_PG = _CLAIM_PG.format(**_CLAIM_FORMAT, forget="")


def lock_run_and_claim(session: Session, run_id: str, step_id: str, attempt: int, *, worker: str,
                       lease_s: float, outbox_id: int | None = None) -> Claimed | None:
    """Lock the run and, if it is running or waiting, claim the step: ``queued → running`` for exactly
    this attempt, with the worker's name, a lease and its ``step_started`` event. None if there is no
    such run; ``claimed`` False if the guard matched nothing (a stale or duplicate delivery, or a run
    that is not running). ``outbox_id``: the outbox row of an attempt claimed without its message
    (an eager step, PostgreSQL only), deleted by the same statement whatever the guard found."""
    data = {"worker": worker}
    if session.get_bind().dialect.name == "postgresql":
        params = dict(run_id=run_id, step_id=step_id, attempt=attempt, worker=worker, lease_s=float(lease_s),
                      data=Jsonb(data))
        if outbox_id is None:
            row = first_row_on_driver(session, _CLAIM_PG, params)
        else:
            row = first_row_on_driver(session, _CLAIM_EAGER_PG, params | {"outbox_id": outbox_id})
        return _claimed(session, row, step_id, attempt, data)
    run = lock_run(session, run_id, with_tenant_policy=True)
    if run is None:
        return None
    claimed = (claim_step(session, run_id, step_id, attempt, worker=worker, lease_s=lease_s)
               if run.status in CLAIMABLE_RUN else None)
    if claimed is None:
        return Claimed(run, False)
    changes = RunChanges(run)
    changes.event("step_started", step_id, attempt, **data)
    apply_run_changes(session, changes)
    return Claimed(run, True, claimed.checkpoint, item_value=claimed.item_value)


def send_claim(session: Session, run_id: str, step_id: str, attempt: int, *, worker: str,
               lease_s: float) -> Callable[[], Claimed | None]:
    """``lock_run_and_claim``'s statement on PostgreSQL, sent in ``sent_together``'s pipeline after the
    statements of the transaction that queued the step (a worker's outcome whose next step it runs
    itself: the step's queueing, its claim and the run's lock in one transaction, no outbox row); what
    it found, to read once the pipeline ended."""
    data = {"worker": worker}
    first_row = send_first_row_on_driver(session, _CLAIM_PG, dict(
        run_id=run_id, step_id=step_id, attempt=attempt, worker=worker, lease_s=float(lease_s), data=Jsonb(data)))
    return lambda: _claimed(session, first_row(), step_id, attempt, data)


def _claimed(session: Session, row: Any, step_id: str, attempt: int, data: dict) -> Claimed | None:
    """What the claim's statement answered (``row``), its ``step_started`` event handed to the live
    streams after the commit."""
    if row is None:
        return None
    if row.started_seq is None:
        return Claimed(row, False)
    event = dict(run_id=row.id, seq=row.started_seq, type="step_started", step_id=step_id, attempt=attempt,
                 data=data, created_at=row.started_created_at.astimezone(UTC))
    stage_written(session, row, [event], previous_status=None, status=row.status,
                  waiting_on=row.waiting_on, status_changed=False)
    step = StepState(step_id, row.claimed_type, StepStatus.RUNNING, attempt, row.claimed_max_attempts,
                     row.claimed_queue, policy=tuple(row.claimed_policy or ()))
    run = SimpleNamespace(**{name: getattr(row, name) for name in OUTCOME_RUN_COLUMNS} | {"last_seq": row.started_seq})
    seen = RunState.from_row(run, [step], complete=False, locked=False)
    return Claimed(row, True, row.claimed_checkpoint, seen, row.claimed_item_value)


def claim_step(session: Session, run_id: str, step_id: str, attempt: int, *, worker: str, lease_s: float) -> Any:
    """``queued → running`` for exactly this attempt, with the worker's name and a lease; returns the
    step's checkpoint row (``.checkpoint``), or None if the guard matched nothing (stale or duplicate)."""
    allowed = step_allowed_from(StepStatus.RUNNING) & {StepStatus.QUEUED}
    return session.execute(
        update(STEPS)
        .where(STEPS.c.run_id == run_id, STEPS.c.step_id == step_id, STEPS.c.attempt == attempt,
               STEPS.c.status.in_([s.value for s in allowed]))
        .values(status=StepStatus.RUNNING.value, started_at=db_now(), worker=worker,
                lease_expires_at=db_now(lease_s))
        .returning(STEPS.c.checkpoint, STEPS.c.item_value)
    ).one_or_none()


def extend_lease(session: Session, run_id: str, step_id: str, attempt: int, lease_s: float) -> bool:
    """Extend a running attempt's lease; False if the attempt is no longer running or must stop."""
    updated = session.execute(
        update(STEPS)
        .where(STEPS.c.run_id == run_id, STEPS.c.step_id == step_id, STEPS.c.attempt == attempt,
               STEPS.c.status == StepStatus.RUNNING.value, STEPS.c.cancel_requested.is_(False))
        .values(lease_expires_at=db_now(lease_s))
    ).rowcount
    return updated == 1
