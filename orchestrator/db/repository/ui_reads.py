"""Reads of the web UI that the API's answers do not carry: the step holding each run of a page of
runs (one query for the page, never one per run) and the facts a run's timeline is drawn from (one
bounded query of its attempt events)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from orchestrator.db.repository.common import EVENTS, STEPS
from orchestrator.states import StepStatus

# The step statuses that hold a run, most telling first (as serializers.current_step orders them).
HOLDING = (StepStatus.RUNNING, StepStatus.WAITING, StepStatus.QUEUED, StepStatus.RETRYING)

# The events a timeline is drawn from: an attempt's moves (a wait for a person, an event or a timer
# is a step_waiting that the step's next move ends).
TIMELINE_EVENTS = (
    "step_queued", "step_started", "step_completed", "step_failed", "step_retrying", "step_cancelled",
    "step_waiting", "step_deferred",
)

# At most this many events feed one timeline (a run's log is append-only; a bound keeps a page's cost
# bounded: a 1,000-step run with retries stays well under it).
TIMELINE_EVENT_LIMIT = 20_000


def current_steps(session: Session, run_ids: Sequence[str]) -> dict[str, str | None]:
    """{run id: the id of the step holding it now, or None}, for every run of ``run_ids``, in one query.
    The caller scopes ``run_ids`` to its tenant (they come from a tenant's list of runs)."""
    result: dict[str, str | None] = dict.fromkeys(run_ids)
    if not run_ids:
        return result
    rank = {status.value: i for i, status in enumerate(HOLDING)}
    best: dict[str, tuple[int, int]] = {}
    rows = session.execute(
        select(STEPS.c.run_id, STEPS.c.step_id, STEPS.c.status, STEPS.c.position)
        .where(STEPS.c.run_id.in_(list(run_ids)), STEPS.c.status.in_([s.value for s in HOLDING]),
               STEPS.c.item_of.is_(None))  # a for-each step holds its run, not one of its items
    )
    for run_id, step_id, status, position in rows:
        key = (rank[status], position)
        if run_id not in best or key < best[run_id]:
            best[run_id], result[run_id] = key, step_id
    return result


_EVENT_COLUMNS = (EVENTS.c.seq, EVENTS.c.type, EVENTS.c.step_id, EVENTS.c.attempt, EVENTS.c.data, EVENTS.c.created_at)


def timeline_events(session: Session, run_id: str) -> list[dict[str, Any]]:
    """A run's attempt events in order (seq, type, step_id, attempt, data, created_at as datetimes),
    at most TIMELINE_EVENT_LIMIT of them. The caller has checked that the run is its tenant's."""
    rows = session.execute(
        select(*_EVENT_COLUMNS).where(EVENTS.c.run_id == run_id, EVENTS.c.type.in_(TIMELINE_EVENTS))
        .order_by(EVENTS.c.seq).limit(TIMELINE_EVENT_LIMIT)
    )
    return [row._asdict() for row in rows]


def run_events(session: Session, run_id: str, limit: int) -> list[dict[str, Any]]:
    """A run's whole event log in order, at most ``limit`` events, as plain dicts (the run page's log
    and timeline read it once). The caller has checked that the run is its tenant's."""
    rows = session.execute(select(*_EVENT_COLUMNS).where(EVENTS.c.run_id == run_id).order_by(EVENTS.c.seq).limit(limit))
    return [row._asdict() for row in rows]
