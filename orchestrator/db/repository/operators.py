"""Operators' tools over many runs: the runs a bulk filter selects, the definitions forks run, and the
current step of a page of runs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from orchestrator.db.models import Run, Step, Workflow, WorkflowVersion


@dataclass(frozen=True)
class RunFilter:
    """Which runs of a tenant a bulk action selects; every criterion given must hold."""

    statuses: tuple[str, ...] = ()
    workflow_id: str | None = None
    error_code: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    run_ids: tuple[str, ...] = ()


def _filtered(query, tenant_id: str, where: RunFilter):
    query = query.where(Run.tenant_id == tenant_id)
    if where.statuses:
        query = query.where(Run.status.in_(where.statuses))
    if where.workflow_id:
        query = query.where(Run.workflow_id == where.workflow_id)
    if where.error_code:
        query = query.where(Run.error["code"].as_string() == where.error_code)
    if where.created_after:
        query = query.where(Run.created_at > where.created_after)
    if where.created_before:
        query = query.where(Run.created_at < where.created_before)
    if where.run_ids:
        query = query.where(Run.id.in_(where.run_ids))
    return query


def count_matching_runs(session: Session, tenant_id: str, where: RunFilter) -> int:
    """How many of the tenant's runs ``where`` selects."""
    return session.execute(_filtered(select(func.count()).select_from(Run), tenant_id, where)).scalar_one()


def matching_runs(session: Session, tenant_id: str, where: RunFilter, limit: int) -> Sequence[Any]:
    """The first ``limit`` runs ``where`` selects, newest first: (id, status) rows."""
    query = _filtered(select(Run.id, Run.status), tenant_id, where)
    return session.execute(query.order_by(Run.created_at.desc(), Run.id.desc()).limit(limit)).all()


def store_fork_definition(session: Session, tenant_id: str, workflow_id: str, definition: dict) -> int:
    """Store the definition a fork with step overrides runs, as a version of its own numbered -1, -2, …
    (never listed among the workflow's versions, never its latest); returns its number. The
    workflow's row is locked, as a publish locks it, so two forks cannot take the same number."""
    session.execute(select(Workflow.id).where(Workflow.tenant_id == tenant_id, Workflow.id == workflow_id)
                    .with_for_update())
    lowest = session.execute(select(func.min(WorkflowVersion.version)).where(
        WorkflowVersion.tenant_id == tenant_id, WorkflowVersion.workflow_id == workflow_id)).scalar_one()
    number = min(lowest or 0, 0) - 1
    session.add(WorkflowVersion(tenant_id=tenant_id, workflow_id=workflow_id, version=number, definition=definition))
    session.flush()
    return number


def current_steps(session: Session, run_ids: Sequence[str]) -> dict[str, list[Step]]:
    """The steps doing something now (running, waiting, queued or retrying) of each run of ``run_ids``:
    what the current step of a page of runs is chosen from."""
    found: dict[str, list[Step]] = {run_id: [] for run_id in run_ids}
    if not run_ids:
        return found
    rows = session.execute(select(Step).where(
        Step.run_id.in_(list(run_ids)), Step.status.in_(("running", "waiting", "queued", "retrying")),
        Step.item_of.is_(None),
    ).order_by(Step.position)).scalars()
    for step in rows:
        found[step.run_id].append(step)
    return found
