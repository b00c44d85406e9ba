"""Runs started by an event (POST /events): every live workflow of the tenant whose trigger matches.

The workflows that may match are found by the event's name (``workflow_triggers``, kept by each
publish); each one's latest definition decides (orchestrator/triggers.py), and the run starts through
``service.start_run`` with ``trigger_type="event"`` and ``triggered_by`` the event's id.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from orchestrator import service, triggers
from orchestrator.catalog import DefinitionCatalog
from orchestrator.db import repository as repo
from orchestrator.errors import SwitchyardError
from orchestrator.settings import Settings


@dataclass
class EventStarts:
    """Runs an event started, and the workflows whose trigger could not start one (with why)."""

    started_runs: list[str] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)


def start_runs(session: Session, settings: Settings, catalog: DefinitionCatalog, tenant_id: str,
               event: triggers.Event) -> EventStarts:
    """Start one run of every workflow of the tenant whose trigger matches ``event``, in the caller's
    transaction; a workflow that cannot start one (its input refused, say) does not stop the others."""
    out = EventStarts()
    for workflow_id, version in repo.workflows_on_event(session, tenant_id, event.name):
        definition = catalog.get(session, (tenant_id, workflow_id, version))
        found = triggers.match(definition.triggers, event)
        if not found.matched:
            if found.error:
                out.errors.append({"workflow_id": workflow_id, "code": "template_error", "message": found.error})
            continue
        try:
            with session.begin_nested():
                run = service.start_run(session, settings, tenant_id, workflow_id, found.input, version=version,
                                        trigger_type="event", triggered_by=event.id).run
        except SwitchyardError as exc:
            out.errors.append({"workflow_id": workflow_id, "code": exc.code, "message": str(exc)})
            continue
        out.started_runs.append(run.id)
    return out
