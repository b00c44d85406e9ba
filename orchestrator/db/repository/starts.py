"""Creating a run: the run, its steps, its first events and the outbox rows of the steps its first pass
queued, written together.

On PostgreSQL this is one statement (data-modifying CTEs), so a start in autocommit is one round trip:
the API's POST /runs sends nothing else to the database when its caller's token and the workflow's
head are known. The statement is guarded: it writes nothing unless the workflow is still live and its
latest version is still the one the caller read (what the caller built may depend on it); and
a run whose Idempotency-Key is taken already is not written (ON CONFLICT … DO NOTHING). Either way the
caller is told nothing was written and finds out why with the slower reads (service.start_run).
Elsewhere (SQLite, the embedded default) the same rows are written by the ORM in a savepoint, after the
same guard as a read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import datetime
from functools import cache
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from orchestrator.db.models import Run, Step, Workflow
from orchestrator.db.repository.events import stage_written
from orchestrator.db.repository.runs import insert_run
from orchestrator.db.repository.scheduling import insert_outbox
from orchestrator.db.session import first_row_on_driver
from orchestrator.db.types import db_now
from orchestrator.messages import StepMessage
from orchestrator.states import RunStatus, StepStatus


@dataclass(frozen=True)
class NewRun:
    """What a start writes. ``run`` and ``steps`` are new ORM entities, not in any session (their
    times the database's clock: created_at always, the run's started_at and a step's queued_at when
    the first pass set them to ``db_now()``); ``events`` the rows of its log from seq 1 (type,
    step_id, attempt, data); ``messages`` its first pass's step messages, each to get an outbox row.
    ``latest_version``: write only if this is still the workflow's latest version (None: whichever)."""

    run: Run
    steps: list[Step]
    events: list[dict[str, Any]]
    messages: list[StepMessage]
    latest_version: int | None


def insert_new_run(session: Session, new: NewRun) -> list[StepMessage] | None:
    """Write ``new`` (see the module's docstring) and return its messages with their outbox ids, having
    set the run's created_at (and started_at) and last_seq from what was written; None if nothing was
    written: the workflow is gone, archived or has a newer latest version than ``new.latest_version``,
    or another run holds the Idempotency-Key."""
    if session.get_bind().dialect.name == "postgresql":
        return _insert_pg(session, new)
    return _insert_orm(session, new)


def _insert_orm(session: Session, new: NewRun) -> list[StepMessage] | None:
    run = new.run
    head = session.execute(select(Workflow.latest_version, Workflow.archived_at).where(
        Workflow.tenant_id == run.tenant_id, Workflow.id == run.workflow_id)).one_or_none()
    if head is None or head.archived_at is not None or new.latest_version not in (None, head.latest_version):
        return None
    try:
        with session.begin_nested():
            insert_run(session, run, new.steps, [dict(e) for e in new.events])
            messages = insert_outbox(session, new.messages)
    except IntegrityError:
        if run.idempotency_key is None:
            raise
        return None  # another request with the same key won the race
    session.refresh(run)
    return messages


def _insert_pg(session: Session, new: NewRun) -> list[StepMessage] | None:
    run = new.run
    run.last_seq = len(new.events)
    run_row = _row(run, skip=("created_at", "started_at"))
    step_rows = [_row(step, skip=("queued_at",)) for step in new.steps]
    events = [dict(run_id=run.id, seq=seq, **event) for seq, event in enumerate(new.events, start=1)]
    outbox = [m.outbox_row() for m in new.messages]
    sql = _statement(tuple(run_row), tuple(sorted({key for row in step_rows for key in row})))
    written = first_row_on_driver(session, sql, {
        "tenant_id": run.tenant_id, "workflow_id": run.workflow_id, "latest": new.latest_version,
        "run": _json(run_row), "steps": _json(step_rows), "events": _json(events), "outbox": _json(outbox),
    })
    if written is None or written.created_at is None:
        return None
    run.created_at = written.created_at
    run.started_at = written.created_at if run.status != RunStatus.QUEUED.value else None
    for step in new.steps:
        step.queued_at = written.created_at if step.status == StepStatus.QUEUED.value else None
    for event in events:
        event["created_at"] = written.created_at
    _stage(session, run, events)
    outbox_ids = dict(written.outbox)
    return [replace(m, outbox_id=outbox_ids[m.step_id]) for m in new.messages]


def _stage(session: Session, run: Run, events: list[dict]) -> None:
    """The new run's log for the live streams, as insert_run leaves it: created queued, then started."""
    stage_written(session, run, events[:1], previous_status=None, status=RunStatus.QUEUED.value, waiting_on=None,
                  status_changed=True)
    if events[1:]:
        stage_written(session, run, events[1:], previous_status=RunStatus.QUEUED.value, status=run.status,
                      waiting_on=run.waiting_on, status_changed=run.status != RunStatus.QUEUED.value)


def _row(entity: Run | Step, skip: tuple[str, ...]) -> dict[str, Any]:
    """The entity's column values as an INSERT would send them: what it set, else the column's default
    (SQLAlchemy applies those at flush, which this statement skips); None values are left out, so the
    columns get NULL or their server default. ``skip``: the times the statement takes from the clock."""
    row = {}
    for column in entity.__table__.columns:
        if column.key in skip:
            value = getattr(entity, column.key)
            if value is not None and not isinstance(value, db_now):
                raise ValueError(f"{column.key} of a new {entity.__tablename__} row is the database's clock")
            continue
        value = getattr(entity, column.key)
        if value is None and column.default is not None and column.default.is_scalar:
            value = column.default.arg
        if value is not None:
            row[column.key] = value
    return row


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=_encode)


def _encode(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"a new run's value of type {type(value).__name__} cannot be written as JSON")


@cache
def _statement(run_columns: tuple[str, ...], step_columns: tuple[str, ...]) -> str:
    """The start's statement for rows with these columns (one per shape; psycopg prepares each).

    Rows go in as JSON, each turned into a row of its table by jsonb_populate_record(set), so the
    statement does not change with the values. Its answer: the run's created_at (null when nothing
    was written) and the outbox rows' ids by step."""
    run_cols, step_cols = ", ".join(run_columns), ", ".join(step_columns)
    return f"""
WITH head AS (
    SELECT 1 FROM workflows
    WHERE tenant_id = %(tenant_id)s AND id = %(workflow_id)s AND archived_at IS NULL
      AND (%(latest)s::integer IS NULL OR latest_version = %(latest)s::integer)
), new_run AS (
    INSERT INTO runs (created_at, started_at, {run_cols})
    SELECT clock.t, CASE WHEN r.status = '{RunStatus.QUEUED.value}' THEN NULL ELSE clock.t END,
           {", ".join(f"r.{c}" for c in run_columns)}
    FROM jsonb_populate_record(NULL::runs, %(run)s::jsonb) AS r, head,
         (SELECT clock_timestamp() AS t) AS clock  -- one reading: created_at and started_at are the same time
    ON CONFLICT (tenant_id, idempotency_key) DO NOTHING
    RETURNING created_at
), new_steps AS (
    INSERT INTO steps (queued_at, {step_cols})
    SELECT CASE WHEN s.status = '{StepStatus.QUEUED.value}' THEN (SELECT created_at FROM new_run) END,
           {", ".join(f"s.{c}" for c in step_columns)}
    FROM jsonb_populate_recordset(NULL::steps, %(steps)s::jsonb) AS s
    WHERE EXISTS (SELECT 1 FROM new_run)
), new_events AS (
    INSERT INTO events (created_at, run_id, seq, type, step_id, attempt, data)
    SELECT (SELECT created_at FROM new_run), e.run_id, e.seq, e.type, e.step_id, e.attempt, e.data
    FROM jsonb_populate_recordset(NULL::events, %(events)s::jsonb) AS e
    WHERE EXISTS (SELECT 1 FROM new_run)
), new_outbox AS (
    INSERT INTO outbox (created_at, run_id, step_id, attempt, queue, soft_time_limit)
    SELECT (SELECT created_at FROM new_run), o.run_id, o.step_id, o.attempt, o.queue, o.soft_time_limit
    FROM jsonb_populate_recordset(NULL::outbox, %(outbox)s::jsonb) AS o
    WHERE EXISTS (SELECT 1 FROM new_run)
    RETURNING step_id, id
)
SELECT (SELECT created_at FROM new_run) AS created_at,
       (SELECT coalesce(json_agg(json_build_array(step_id, id)), '[]'::json) FROM new_outbox) AS outbox
"""


def read_workflow(session: Session, tenant_id: str, workflow_id: str) -> Workflow | None:
    """The workflow's row as the database has it now (not as the session loaded it before)."""
    return session.get(Workflow, (tenant_id, workflow_id), populate_existing=True)
