"""Schedules and their fires (orchestrator/firing.py fires them; orchestrator/schedules.py decides)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from orchestrator.db.models import Schedule, ScheduleFire
from orchestrator.db.types import db_now


def upsert(session: Session, table):
    """INSERT … ON CONFLICT for this session's backend (PostgreSQL and SQLite both have it)."""
    return (postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert)(table)


def put_schedule(session: Session, key: tuple[str, str, str], fields: dict[str, Any]) -> Schedule:
    """Create or replace the schedule (tenant, workflow, id) with ``fields`` (its columns), locked."""
    tenant_id, workflow_id, schedule_id = key
    session.execute(upsert(session, Schedule).values(
        tenant_id=tenant_id, workflow_id=workflow_id, id=schedule_id, created_at=db_now(), updated_at=db_now(),
        **fields).on_conflict_do_update(index_elements=["tenant_id", "workflow_id", "id"],
                                        set_={**fields, "updated_at": db_now()}))
    return session.execute(select(Schedule).where(*_key(key)).with_for_update()
                           .execution_options(populate_existing=True)).scalar_one()


def _key(key: tuple[str, str, str]):
    tenant_id, workflow_id, schedule_id = key
    return Schedule.tenant_id == tenant_id, Schedule.workflow_id == workflow_id, Schedule.id == schedule_id


def list_schedules(session: Session, tenant_id: str, workflow_id: str | None = None) -> Sequence[Schedule]:
    query = select(Schedule).where(Schedule.tenant_id == tenant_id)
    if workflow_id is not None:
        query = query.where(Schedule.workflow_id == workflow_id)
    return session.execute(query.order_by(Schedule.workflow_id, Schedule.id)).scalars().all()


def get_schedule(session: Session, key: tuple[str, str, str]) -> Schedule | None:
    return session.execute(select(Schedule).where(*_key(key))).scalar_one_or_none()


def delete_schedule(session: Session, key: tuple[str, str, str]) -> bool:
    """Delete the schedule and the record of its fires; False if there was none."""
    tenant_id, workflow_id, schedule_id = key
    deleted = session.execute(delete(Schedule).where(*_key(key))).rowcount
    session.execute(delete(ScheduleFire).where(
        ScheduleFire.tenant_id == tenant_id, ScheduleFire.workflow_id == workflow_id,
        ScheduleFire.schedule_id == schedule_id))
    return bool(deleted)


def lock_due_schedules(session: Session, now: datetime, limit: int) -> Sequence[Schedule]:
    """Enabled schedules whose next slot has come, locked; another scheduler's are skipped, not waited for."""
    return session.execute(
        select(Schedule).where(Schedule.next_fire_at.is_not(None), Schedule.next_fire_at <= now)
        .order_by(Schedule.next_fire_at).limit(limit).with_for_update(skip_locked=True)
    ).scalars().all()


def advance_schedule(session: Session, schedule: Schedule, *, last_slot: datetime, next_fire_at: datetime | None,
                     last_run_id: str | None) -> None:
    """After a firing: the last slot considered, the next slot, the last run started."""
    session.execute(update(Schedule).where(*_key((schedule.tenant_id, schedule.workflow_id, schedule.id))).values(
        last_slot=last_slot, next_fire_at=next_fire_at, last_run_id=last_run_id))


def next_fire_at(session: Session) -> datetime | None:
    """The earliest next slot of any enabled schedule."""
    return session.execute(select(func.min(Schedule.next_fire_at))).scalar_one()


def insert_fire(session: Session, schedule: Schedule, slot: datetime, outcome: str, *,
                run_id: str | None = None, detail: str | None = None) -> bool:
    """Record the slot as fired; False if it already was (by another scheduler, or before a restart)."""
    inserted = session.execute(upsert(session, ScheduleFire).values(
        tenant_id=schedule.tenant_id, workflow_id=schedule.workflow_id, schedule_id=schedule.id, slot=slot,
        outcome=outcome, run_id=run_id, detail=detail, created_at=db_now(),
    ).on_conflict_do_nothing(index_elements=["tenant_id", "workflow_id", "schedule_id", "slot"])
        .returning(ScheduleFire.slot))
    # RETURNING, not rowcount: the driver may count a row ON CONFLICT DO NOTHING did not insert.
    return inserted.first() is not None


def set_fire_run(session: Session, schedule: Schedule, slot: datetime, run_id: str) -> None:
    session.execute(update(ScheduleFire).where(*_fire(schedule, slot)).values(run_id=run_id))


def mark_fire_failed(session: Session, schedule: Schedule, slot: datetime, detail: str) -> None:
    """The slot's run could not start (its workflow archived, its input refused): say why."""
    session.execute(update(ScheduleFire).where(*_fire(schedule, slot)).values(outcome="failed", detail=detail))


def _fire(schedule: Schedule, slot: datetime):
    return (ScheduleFire.tenant_id == schedule.tenant_id, ScheduleFire.workflow_id == schedule.workflow_id,
            ScheduleFire.schedule_id == schedule.id, ScheduleFire.slot == slot)


