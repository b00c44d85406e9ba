"""Child runs (orchestrator/core/children.py): which child a sub-run step (or item) runs, a child's end
waking its parent, the children a parent's pass reads, and the children a control or a stopped step
reaches.

A sub-run step's row names its child in ``checkpoint`` ({"child_run_id": …}, written when the child is
created, cleared when the step starts again): a parent's pass reads the children of its due steps by
primary key, never the run's other children (a map over a thousand child runs has a thousand)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session

from orchestrator.core import items
from orchestrator.core.children import ChildFacts
from orchestrator.db.repository.common import LIVE_RUN, RUNS, STEPS
from orchestrator.db.types import db_now
from orchestrator.states import TERMINAL_STEP, RunStatus, StepStatus

_CHILD_OF_STEP = STEPS.c.checkpoint["child_run_id"].as_string()


def flag_run(session: Session, run_id: str) -> None:
    """Flag a run with work for the scheduler."""
    session.execute(update(RUNS).where(RUNS.c.id == run_id, RUNS.c.has_work.is_(False)).values(has_work=True))


def wake_parent(session: Session, parent_run_id: str, child_run_id: str) -> None:
    """A child run ended: its parent is flagged with work, then the step (or item) that runs this child
    is made due, so the parent's pass reads this child (core.children.woken). The parent's row first:
    its lock orders this write after a pass over the parent that holds it."""
    flag_run(session, parent_run_id)
    session.execute(
        update(STEPS)
        .where(STEPS.c.run_id == parent_run_id,
               STEPS.c.step_id == select(RUNS.c.parent_step_id).where(RUNS.c.id == child_run_id).scalar_subquery(),
               STEPS.c.status == StepStatus.RUNNING.value, _CHILD_OF_STEP == child_run_id)
        .values(due_at=db_now())
    )


def link_children(session: Session, run_id: str, children: Mapping[str, str]) -> None:
    """Name each step's (or item's) child run on its row: ``children`` is {step id: child run id}."""
    if not children:
        return
    session.execute(
        update(STEPS).where(STEPS.c.run_id == bindparam("run"), STEPS.c.step_id == bindparam("step"))
        .values(checkpoint=bindparam("link", type_=STEPS.c.checkpoint.type)),
        [{"run": run_id, "step": step_id, "link": {"child_run_id": child_id}} for step_id, child_id in children.items()],
    )


def child_facts(session: Session, run_id: str, step_ids: Sequence[str]) -> dict[str, ChildFacts]:
    """The child runs of the run's steps (or items) ``step_ids``, by step id (a step without one absent)."""
    rows = session.execute(
        select(STEPS.c.step_id, RUNS.c.id, RUNS.c.status, RUNS.c.output, RUNS.c.error)
        .join(RUNS, RUNS.c.id == _CHILD_OF_STEP)
        .where(STEPS.c.run_id == run_id, STEPS.c.step_id.in_(list(step_ids)))
    ).all()
    return {row.step_id: ChildFacts(row.id, RunStatus(row.status), row.output, row.error) for row in rows}


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


def lock_live_children(session: Session, run_id: str, step_ids: Sequence[str]) -> tuple[list[Any], list[str]]:
    """The live children of the run's steps or items ``step_ids`` (a step's: its for-each items' too),
    locked, and the steps (or items) whose live child was skipped because another transaction holds it
    (SKIP LOCKED: a parent's pass never waits for a child, whose own end waits for the parent's lock)."""
    live = (RUNS.c.parent_run_id == run_id, RUNS.c.status.in_([s.value for s in LIVE_RUN]))
    rows = session.execute(select(RUNS).where(*live).with_for_update(skip_locked=True)).all()
    mine = [row for row in rows if _stopped(row.parent_step_id, step_ids)]
    locked = {row.id for row in mine}
    everyone = session.execute(select(RUNS.c.id, RUNS.c.parent_step_id).where(*live)).all()
    return mine, [row.parent_step_id for row in everyone
                  if _stopped(row.parent_step_id, step_ids) and row.id not in locked]


def stop_later(session: Session, run_id: str, step_ids: Sequence[str]) -> None:
    """The stopped steps (or items) ``step_ids`` of the locked run could not reach their live children
    (held by another transaction): each is made due and the run flagged, so that its next pass asks
    for them again (core.children.stop_held) — kept in the database, not in the scheduler's memory."""
    session.execute(update(STEPS).where(STEPS.c.run_id == run_id, STEPS.c.step_id.in_(list(step_ids)),
                                        STEPS.c.status.in_([s.value for s in TERMINAL_STEP]))
                    .values(due_at=db_now()))
    flag_run(session, run_id)


def _stopped(parent_step_id: str, step_ids: Sequence[str]) -> bool:
    """Whether a child's parent step (or item) is among ``step_ids``, or is an item of one of them."""
    return parent_step_id in step_ids or items.parent_of(parent_step_id) in step_ids
