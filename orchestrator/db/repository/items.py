"""A for-each step's item rows (orchestrator/core/items.py): written at the step's start, dispatched
in index order a few at a time, stopped together, and read back as the step's output and for
GET /runs/{id}/steps/{step_id}/items. Each statement is set-based: its cost does not grow with the
number of items beyond those it touches. The run must be locked by the caller of every write."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, func, insert, select, text, update
from sqlalchemy.orm import Session

from orchestrator.db.repository.common import STEPS
from orchestrator.db.repository.scheduling import insert_outbox
from orchestrator.db.types import db_now
from orchestrator.messages import StepMessage
from orchestrator.states import IN_FLIGHT_STEP, StepStatus

# Items not ended: stopped with their step.
_NOT_ENDED = sorted(s.value for s in (*IN_FLIGHT_STEP, StepStatus.PENDING))
_OF_STEP = (STEPS.c.run_id, STEPS.c.item_of)


def write_items(session: Session, run_id: str, step_id: str, values: Sequence[Any], keep: Sequence[int] = ()
                ) -> None:
    """One `pending` row per value, replacing the rows of an earlier start of the step (an operator's
    retry), except the succeeded items at the indexes ``keep``, which stay as they are. An item's
    attempt numbers go on from the highest of the rows it replaces, so a new attempt's Celery task id
    is never one revoked before."""
    step = session.execute(
        select(STEPS.c.position, STEPS.c.type, STEPS.c.queue, STEPS.c.max_attempts,
               select(func.coalesce(func.max(STEPS.c.attempt), 0))
               .where(STEPS.c.run_id == run_id, STEPS.c.item_of == step_id).scalar_subquery().label("base"))
        .where(STEPS.c.run_id == run_id, STEPS.c.step_id == step_id)
    ).one()
    kept = set(keep)
    session.execute(delete(STEPS).where(STEPS.c.run_id == run_id, STEPS.c.item_of == step_id,
                                        STEPS.c.item_index.not_in(sorted(kept))))
    session.execute(insert(STEPS), [
        dict(run_id=run_id, step_id=f"{step_id}[{index}]", position=step.position, type=step.type,
             status=StepStatus.PENDING.value, attempt=step.base, max_attempts=step.base + step.max_attempts,
             queue=step.queue, item_of=step_id, item_index=index, item_value=value, cancel_requested=False)
        for index, value in enumerate(values) if index not in kept
    ])


def queue_items(session: Session, run_id: str, step_id: str, count: int, soft_time_limit: float
                ) -> list[StepMessage]:
    """Queue the next ``count`` pending items of the step, in index order (their next attempt), with
    their outbox rows; their messages. One statement on PostgreSQL."""
    if session.get_bind().dialect.name == "postgresql":
        rows = session.execute(_QUEUE_ITEMS_PG, dict(run_id=run_id, step_id=step_id, count=count,
                                                     soft_time_limit=soft_time_limit)).all()
        return [StepMessage(run_id, row.step_id, row.attempt, row.queue, soft_time_limit, row.id) for row in rows]
    moved = session.execute(
        update(STEPS)
        .where(STEPS.c.run_id == run_id, STEPS.c.step_id.in_(_next_pending(run_id, step_id, count)))
        .values(status=StepStatus.QUEUED.value, attempt=STEPS.c.attempt + 1, queued_at=db_now(), held=False)
        .returning(STEPS.c.step_id, STEPS.c.attempt, STEPS.c.queue)
    ).all()
    return insert_outbox(session, [StepMessage(run_id, row.step_id, row.attempt, row.queue, soft_time_limit)
                                   for row in moved])


def start_items(session: Session, run_id: str, step_id: str, count: int) -> list[tuple[str, int]]:
    """Start the next ``count`` pending items of a map over child runs, in index order: `running` at
    their next attempt (their child runs are the caller's to create); (item id, attempt) of each."""
    params = dict(run_id=run_id, step_id=step_id, count=count)
    if session.get_bind().dialect.name == "postgresql":
        rows = session.execute(_START_ITEMS_PG, params).all()
    else:
        rows = session.execute(
            update(STEPS).where(STEPS.c.run_id == run_id, STEPS.c.step_id.in_(_next_pending(run_id, step_id, count)))
            .values(status=StepStatus.RUNNING.value, attempt=STEPS.c.attempt + 1, queued_at=db_now(),
                    started_at=db_now(), due_at=None, checkpoint=None)
            .returning(STEPS.c.step_id, STEPS.c.attempt, STEPS.c.item_index)
        ).all()
    return [(row.step_id, row.attempt) for row in sorted(rows, key=lambda r: r.item_index)]


def _next_pending(run_id: str, step_id: str, count: int):
    """The ids of the step's next ``count`` pending items, in index order."""
    return (select(STEPS.c.step_id).where(STEPS.c.run_id == run_id, STEPS.c.item_of == step_id,
                                          STEPS.c.status == StepStatus.PENDING.value)
            .order_by(STEPS.c.item_index).limit(count))


# The next pending items of a step, picked once (ARRAY(…) is an init plan), then found by primary key:
# written as `step_id IN (SELECT … LIMIT n)`, PostgreSQL planned a semi join that ran the subquery once
# per step row of the run (with the items' fresh rows not yet analysed), 1.2 s per dispatch at a
# thousand items.
_NEXT_PENDING_PG = """unnest(ARRAY(
        SELECT pending.step_id FROM steps AS pending
        WHERE pending.run_id = :run_id AND pending.item_of = :step_id AND pending.status = 'pending'
        ORDER BY pending.item_index LIMIT :count)) AS next (step_id)"""

# The next pending items, moved to `queued` with their outbox rows, in one statement.
_QUEUE_ITEMS_PG = text(f"""
WITH moved AS (
    UPDATE steps SET status = 'queued', attempt = steps.attempt + 1, queued_at = clock_timestamp(), held = false
    FROM {_NEXT_PENDING_PG}
    WHERE steps.run_id = :run_id AND steps.step_id = next.step_id AND steps.status = 'pending'
    RETURNING steps.run_id, steps.step_id, steps.attempt, steps.queue, steps.item_index
)
INSERT INTO outbox (run_id, step_id, attempt, queue, soft_time_limit, created_at)
SELECT run_id, step_id, attempt, queue, :soft_time_limit, clock_timestamp() FROM moved ORDER BY item_index
RETURNING id, step_id, attempt, queue
""")

# The next pending items of a map over child runs, started.
_START_ITEMS_PG = text(f"""
UPDATE steps SET status = 'running', attempt = steps.attempt + 1, queued_at = clock_timestamp(),
    started_at = clock_timestamp(), due_at = NULL, checkpoint = NULL
FROM {_NEXT_PENDING_PG}
WHERE steps.run_id = :run_id AND steps.step_id = next.step_id AND steps.status = 'pending'
RETURNING steps.step_id, steps.attempt, steps.item_index
""")


def stop_items(session: Session, run_id: str, step_id: str, error: dict[str, Any]) -> list[tuple[str, int, str]]:
    """Cancel every item of the step that has not ended; (item id, attempt, type) of each."""
    return [tuple(row) for row in session.execute(
        update(STEPS)
        .where(STEPS.c.run_id == run_id, STEPS.c.item_of == step_id, STEPS.c.status.in_(_NOT_ENDED))
        .values(status=StepStatus.CANCELLED.value, cancel_requested=True, error=error, completed_at=db_now(),
                lease_expires_at=None, due_at=None)
        .returning(STEPS.c.step_id, STEPS.c.attempt, STEPS.c.type)
    )]


def item_outputs(session: Session, run_id: str, step_id: str, total: int) -> list[Any]:
    """The outputs of the step's ``total`` items in index order (None for an item that did not
    succeed): the step's output."""
    rows = session.execute(
        select(STEPS.c.status, STEPS.c.output)
        .where(STEPS.c.run_id == run_id, STEPS.c.item_of == step_id, STEPS.c.item_index < total)
        .order_by(STEPS.c.item_index)
    ).all()
    return [row.output if row.status == StepStatus.SUCCEEDED.value else None for row in rows]


def succeeded_items(session: Session, run_id: str, step_ids: Sequence[str]) -> dict[str, dict[int, Any]]:
    """The succeeded items of the run's for-each steps ``step_ids``, {index: value}, by step id (a
    step started again keeps them: core.items.expand)."""
    found: dict[str, dict[int, Any]] = {step_id: {} for step_id in step_ids}
    for row in session.execute(
        select(STEPS.c.item_of, STEPS.c.item_index, STEPS.c.item_value)
        .where(STEPS.c.run_id == run_id, STEPS.c.item_of.in_(list(step_ids)),
               STEPS.c.status == StepStatus.SUCCEEDED.value)
    ):
        found[row.item_of][row.item_index] = row.item_value
    return found


def item_values(session: Session, run_id: str, item_ids: Sequence[str]) -> dict[str, Any]:
    """The values of the run's for-each items ``item_ids`` (their templates' ``item``), by item id."""
    if not item_ids:
        return {}
    return dict(session.execute(
        select(STEPS.c.step_id, STEPS.c.item_value).where(STEPS.c.run_id == run_id, STEPS.c.step_id.in_(list(item_ids)))
    ).all())


def list_items(session: Session, run_id: str, step_id: str, *, status: str | None, after: int | None,
               limit: int) -> list[Any]:
    """A page of the step's items in index order, from after the index ``after``."""
    query = (select(STEPS.c.item_index, STEPS.c.status, STEPS.c.attempt, STEPS.c.output, STEPS.c.error,
                    STEPS.c.queued_at, STEPS.c.started_at, STEPS.c.completed_at)
             .where(STEPS.c.run_id == run_id, STEPS.c.item_of == step_id)
             .order_by(STEPS.c.item_index).limit(limit))
    if status is not None:
        query = query.where(STEPS.c.status == status)
    if after is not None:
        query = query.where(STEPS.c.item_index > after)
    return list(session.execute(query).all())
