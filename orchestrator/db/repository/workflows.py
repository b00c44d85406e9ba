"""Workflows and their immutable published versions."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import select, tuple_
from sqlalchemy.orm import Session

from orchestrator.db.models import Workflow, WorkflowVersion
from orchestrator.db.repository.tenants import ensure_tenant
from orchestrator.db.types import db_now


def publish_workflow(
    session: Session, tenant_id: str, workflow_id: str, *, name: str, kind: str, definition: dict
) -> WorkflowVersion:
    """Append a new immutable version; the workflow row is locked so versions stay dense."""
    ensure_tenant(session, tenant_id)
    workflow = session.execute(
        select(Workflow).where(Workflow.tenant_id == tenant_id, Workflow.id == workflow_id).with_for_update()
    ).scalar_one_or_none()
    if workflow is None:
        workflow = Workflow(tenant_id=tenant_id, id=workflow_id, name=name, kind=kind, latest_version=1)
        session.add(workflow)
    else:
        workflow.latest_version += 1
        workflow.name, workflow.kind, workflow.updated_at = name, kind, db_now()
    session.flush()
    version = WorkflowVersion(
        tenant_id=tenant_id, workflow_id=workflow_id, version=workflow.latest_version, definition=definition
    )
    session.add(version)
    session.flush()
    return version


def list_workflows(session: Session, tenant_id: str, *, archived: bool = False) -> Sequence[Workflow]:
    """The tenant's live workflows, or with ``archived`` its archived ones."""
    state = Workflow.archived_at.is_not(None) if archived else Workflow.archived_at.is_(None)
    return session.execute(select(Workflow).where(Workflow.tenant_id == tenant_id, state)
                           .order_by(Workflow.id)).scalars().all()


def get_workflow(session: Session, tenant_id: str, workflow_id: str) -> Workflow | None:
    return session.get(Workflow, (tenant_id, workflow_id))


def list_versions(session: Session, tenant_id: str, workflow_id: str) -> Sequence[WorkflowVersion]:
    return (
        session.execute(
            select(WorkflowVersion)
            # A fork's own definition (operators.store_fork_definition) has a negative number: not listed.
            .where(WorkflowVersion.tenant_id == tenant_id, WorkflowVersion.workflow_id == workflow_id,
                   WorkflowVersion.version > 0)
            .order_by(WorkflowVersion.version)
        )
        .scalars()
        .all()
    )


def get_version(session: Session, tenant_id: str, workflow_id: str, version: int) -> WorkflowVersion | None:
    return session.get(WorkflowVersion, (tenant_id, workflow_id, version))


def get_definitions(session: Session, keys: Iterable[tuple[str, str, int]]) -> dict[tuple[str, str, int], dict]:
    """Definitions of several (tenant, workflow, version) at once."""
    keys = list(set(keys))
    if not keys:
        return {}
    cols = (WorkflowVersion.tenant_id, WorkflowVersion.workflow_id, WorkflowVersion.version)
    rows = session.execute(select(*cols, WorkflowVersion.definition).where(tuple_(*cols).in_(keys))).all()
    return {(r[0], r[1], r[2]): r[3] for r in rows}
