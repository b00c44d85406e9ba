"""Appending to the runs' event log, and leaving what a transaction appended for the publisher
(``WRITTEN_EVENTS``, read by orchestrator.streams after the commit)."""

from __future__ import annotations

from sqlalchemy import bindparam, func, insert, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from orchestrator.db.models import Event
from orchestrator.db.types import db_now

# Where apply_run_changes leaves what it wrote, for orchestrator.streams to publish after the commit.
WRITTEN_EVENTS = "switchyard.written_events"


_EVENT_COLUMNS = ("run_id", "seq", "type", "step_id", "attempt", "data")


def _stage_written(session: Session, run, rows: list[dict], previous_status: str | None, status: str,
                   waiting_on: str | None, status_changed: bool) -> None:
    """Leave what this transaction wrote to a run's log for the publisher (orchestrator.streams);
    ``status_changed`` for a new run or one whose status the transaction changed."""
    session.info.setdefault(WRITTEN_EVENTS, []).append(
        {"tenant_id": run.tenant_id, "run_id": run.id, "workflow_id": run.workflow_id,
         "previous_status": previous_status, "status": status, "waiting_on": waiting_on,
         "status_changed": status_changed, "events": rows}
    )


def _insert_events(session: Session, rows: list[dict]) -> None:
    """Append event rows (run_id, seq, …), each with the database's created_at, in one statement
    however many rows (an ORM bulk insert starts a new one at every row whose None values differ
    from the previous row's). On PostgreSQL the rows go as one array per column: psycopg parses a
    statement of many parameters anew on every call, which costs more than the insert itself."""
    if not rows:
        return
    events = Event.__table__
    if session.get_bind().dialect.name == "postgresql":
        written = session.execute(_INSERT_EVENT_ARRAYS, {c: [r[c] for r in rows] for c in _EVENT_COLUMNS}).all()
        created = {(run_id, seq): created_at for run_id, seq, created_at in written}
        for row in rows:
            row["created_at"] = created[(row["run_id"], row["seq"])]
        return
    written = session.execute(
        insert(events).returning(events.c.created_at, sort_by_parameter_order=True),
        [{c: r[c] for c in _EVENT_COLUMNS} for r in rows],
    ).scalars().all()
    for row, created_at in zip(rows, written, strict=True):
        row["created_at"] = created_at


def _insert_event_arrays():
    events = Event.__table__
    arrays = func.unnest(
        *(bindparam(c, type_=postgresql.ARRAY(events.c[c].type)) for c in _EVENT_COLUMNS)
    ).table_valued(*_EVENT_COLUMNS).render_derived(name="new_event")
    return (
        insert(events)
        .from_select([*_EVENT_COLUMNS, "created_at"], select(*(arrays.c[c] for c in _EVENT_COLUMNS), db_now()))
        .returning(events.c.run_id, events.c.seq, events.c.created_at)
    )


_INSERT_EVENT_ARRAYS = _insert_event_arrays()
