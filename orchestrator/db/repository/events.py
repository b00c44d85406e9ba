"""Appending to the runs' event log, and leaving what a transaction appended for the publisher
(``WRITTEN_EVENTS``, read by orchestrator.streams after the commit)."""

from __future__ import annotations

from sqlalchemy import bindparam, func, insert, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from orchestrator.db.repository.common import EVENTS
from orchestrator.db.types import db_now

# Where apply_run_changes leaves what it wrote, for orchestrator.streams to publish after the commit.
WRITTEN_EVENTS = "switchyard.written_events"

# The columns of an event row that a writer sets (created_at is the database's clock).
EVENT_COLUMNS = ("run_id", "seq", "type", "step_id", "attempt", "data")


def stage_written(session: Session, run, rows: list[dict], *, previous_status: str | None, status: str,
                  waiting_on: str | None, status_changed: bool) -> None:
    """Leave what this transaction wrote to a run's log for the publisher (orchestrator.streams);
    ``status_changed`` for a new run or one whose status the transaction changed."""
    session.info.setdefault(WRITTEN_EVENTS, []).append(
        {"tenant_id": run.tenant_id, "run_id": run.id, "workflow_id": run.workflow_id,
         "previous_status": previous_status, "status": status, "waiting_on": waiting_on,
         "status_changed": status_changed, "events": rows}
    )


def insert_events(session: Session, rows: list[dict]) -> None:
    """Append event rows (run_id, seq, …), each with the database's created_at, in one statement
    however many rows (an ORM bulk insert starts a new one at every row whose None values differ
    from the previous row's). On PostgreSQL the rows go as one array per column: psycopg parses a
    statement of many parameters anew on every call, which costs more than the insert itself."""
    if not rows:
        return
    if session.get_bind().dialect.name == "postgresql":
        written = session.execute(_INSERT_EVENT_ARRAYS, {c: [r[c] for r in rows] for c in EVENT_COLUMNS}).all()
        created = {(run_id, seq): created_at for run_id, seq, created_at in written}
        for row in rows:
            row["created_at"] = created[(row["run_id"], row["seq"])]
        return
    written = session.execute(
        _INSERT_EVENTS, [{c: r[c] for c in EVENT_COLUMNS} for r in rows],
    ).scalars().all()
    for row, created_at in zip(rows, written, strict=True):
        row["created_at"] = created_at


# Append event rows given as one array per column (PostgreSQL), each with the database's clock.
_NEW_EVENT_ARRAYS = func.unnest(
    *(bindparam(c, type_=postgresql.ARRAY(EVENTS.c[c].type)) for c in EVENT_COLUMNS)
).table_valued(*EVENT_COLUMNS).render_derived(name="new_event")
_INSERT_EVENT_ARRAYS = (
    insert(EVENTS)
    .from_select([*EVENT_COLUMNS, "created_at"], select(*(_NEW_EVENT_ARRAYS.c[c] for c in EVENT_COLUMNS), db_now()))
    .returning(EVENTS.c.run_id, EVENTS.c.seq, EVENTS.c.created_at)
)
# Append event rows one parameter set each (SQLite), returning their created_at in the rows' order.
_INSERT_EVENTS = insert(EVENTS).returning(EVENTS.c.created_at, sort_by_parameter_order=True)
