"""Event triggers, event receipts, archived workflows and the retention sweep's reads and deletes."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from sqlalchemy import Table, delete, func, select, tuple_, update
from sqlalchemy.orm import Session

from orchestrator.db.models import (
    Base,
    EventReceipt,
    PurgedRows,
    Run,
    ScheduleFire,
    Workflow,
    WorkflowTrigger,
)
from orchestrator.db.repository.schedules import upsert
from orchestrator.db.types import db_now
from orchestrator.states import TERMINAL_RUN

_TERMINAL = sorted(s.value for s in TERMINAL_RUN)


def set_workflow_lifecycle(session: Session, tenant_id: str, workflow_id: str, *, retention_days: int | None,
                           events: Iterable[str]) -> None:
    """After a publish: the workflow is live again (not archived), keeps its runs ``retention_days``, and
    starts on ``events`` (its latest version's triggers)."""
    session.execute(update(Workflow).where(Workflow.tenant_id == tenant_id, Workflow.id == workflow_id)
                    .values(archived_at=None, retention_days=retention_days))
    session.execute(delete(WorkflowTrigger).where(WorkflowTrigger.tenant_id == tenant_id,
                                                  WorkflowTrigger.workflow_id == workflow_id))
    rows = [{"tenant_id": tenant_id, "workflow_id": workflow_id, "event": name} for name in sorted(set(events))]
    if rows:
        session.execute(WorkflowTrigger.__table__.insert(), rows)


def archive_workflow(session: Session, tenant_id: str, workflow_id: str) -> Workflow | None:
    """Archive the workflow (kept as it is if it already was); None if the tenant has no such workflow."""
    workflow = session.get(Workflow, (tenant_id, workflow_id), with_for_update=True)
    if workflow is not None and workflow.archived_at is None:
        session.execute(update(Workflow).where(Workflow.tenant_id == tenant_id, Workflow.id == workflow_id)
                        .values(archived_at=db_now()))
        session.refresh(workflow)
    return workflow


def workflows_on_event(session: Session, tenant_id: str, event: str) -> Sequence[tuple[str, int]]:
    """(workflow id, latest version) of the tenant's live workflows whose latest version starts on ``event``."""
    return session.execute(
        select(Workflow.id, Workflow.latest_version)
        .join(WorkflowTrigger, (WorkflowTrigger.tenant_id == Workflow.tenant_id)
              & (WorkflowTrigger.workflow_id == Workflow.id))
        .where(WorkflowTrigger.tenant_id == tenant_id, WorkflowTrigger.event == event, Workflow.archived_at.is_(None))
        .order_by(Workflow.id)
    ).all()


def record_event_id(session: Session, tenant_id: str, event_id: str) -> bool:
    """Remember an event id; False if the tenant sent it before (a concurrent sender's row is waited for)."""
    inserted = session.execute(upsert(session, EventReceipt).values(tenant_id=tenant_id, id=event_id, created_at=db_now())
                               .on_conflict_do_nothing(index_elements=["tenant_id", "id"]).returning(EventReceipt.id))
    return inserted.first() is not None


def retention_targets(session: Session, default_days: int) -> Sequence[tuple[str, str, int]]:
    """(tenant, workflow, days) of every workflow whose terminal runs expire (days > 0)."""
    days = func.coalesce(Workflow.retention_days, default_days)
    return session.execute(select(Workflow.tenant_id, Workflow.id, days).where(days > 0)
                           .order_by(Workflow.tenant_id, Workflow.id)).all()


def lock_expired_runs(session: Session, target: tuple[str, str], cutoff: datetime, limit: int,
                      after: datetime | None = None) -> list[tuple[str, datetime]]:
    """Up to ``limit`` terminal runs of the workflow that ended before ``cutoff``, oldest first (created at or
    after ``after``, where the previous batch stopped: the scan never walks back over the index entries
    of the runs it deleted), locked; runs another transaction holds, a retry say, are skipped. A run ends
    after it was created, so ``created_at < cutoff`` bounds the scan on the (tenant, workflow, created_at)
    index. (id, created_at) pairs."""
    tenant_id, workflow_id = target
    query = select(Run.id, Run.created_at).where(
        Run.tenant_id == tenant_id, Run.workflow_id == workflow_id, Run.created_at < cutoff,
        Run.status.in_(_TERMINAL), Run.completed_at < cutoff)
    if after is not None:
        query = query.where(Run.created_at >= after)
    return [(r.id, r.created_at) for r in session.execute(
        query.order_by(Run.created_at).limit(limit).with_for_update(skip_locked=True))]


def _run_tables() -> list[Table]:
    """Every table with rows of a run (a ``run_id`` column), those that depend on others first; the
    record of schedule fires stays (it is what fires each slot once) and is pruned by age instead."""
    return [table for table in reversed(Base.metadata.sorted_tables)
            if "run_id" in table.c and table.name != ScheduleFire.__tablename__]


def delete_runs(session: Session, run_ids: list[str]) -> dict[str, int]:
    """Delete the runs and every row of theirs; rows deleted per table."""
    counts = {}
    for table in _run_tables():
        counts[table.name] = session.execute(delete(table).where(table.c.run_id.in_(run_ids))).rowcount
    counts["runs"] = session.execute(delete(Run).where(Run.id.in_(run_ids))).rowcount
    return counts


def add_purged(session: Session, tenant_id: str, counts: dict[str, int]) -> None:
    """Add to the tenant's count of purged rows per table."""
    rows = [{"tenant_id": tenant_id, "table_name": name, "rows": n} for name, n in counts.items() if n]
    if rows:
        insert = upsert(session, PurgedRows).values(rows)
        session.execute(insert.on_conflict_do_update(index_elements=["tenant_id", "table_name"],
                                                     set_={"rows": PurgedRows.rows + insert.excluded.rows}))


def purged_rows(session: Session, tenant_id: str | None) -> dict[str, int]:
    """Rows purged so far per table (of one tenant, or of all)."""
    query = select(PurgedRows.table_name, func.sum(PurgedRows.rows)).group_by(PurgedRows.table_name)
    if tenant_id is not None:
        query = query.where(PurgedRows.tenant_id == tenant_id)
    return {name: int(n) for name, n in session.execute(query)}


def prune_old_records(session: Session, cutoff: datetime, limit: int) -> int:
    """Delete up to ``limit`` event receipts and schedule fires older than ``cutoff``; rows deleted."""
    receipts = select(EventReceipt.tenant_id, EventReceipt.id).where(EventReceipt.created_at < cutoff).limit(limit)
    fires_key = (ScheduleFire.tenant_id, ScheduleFire.workflow_id, ScheduleFire.schedule_id, ScheduleFire.slot)
    fires = select(*fires_key).where(ScheduleFire.slot < cutoff).limit(limit)
    deleted = session.execute(delete(EventReceipt).where(
        tuple_(EventReceipt.tenant_id, EventReceipt.id).in_(receipts))).rowcount
    return deleted + session.execute(delete(ScheduleFire).where(tuple_(*fires_key).in_(fires))).rowcount
