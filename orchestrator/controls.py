"""Operators' actions on a run: pause, resume, cancel, retry, rerun (API.md "Controls").

Each is a fact first (the guarded writes and their audit event, in the caller's transaction) and a
signal second: the returned Effects say whom to wake and which tasks to revoke after the commit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError
from sqlalchemy.orm import Session

from orchestrator import outcomes, policy, service, states
from orchestrator.catalog import DefinitionCatalog
from orchestrator.db import repository as repo
from orchestrator.db.repository import RunChanges
from orchestrator.db.types import db_now
from orchestrator.definitions import Definition
from orchestrator.errors import InvalidRequest, InvalidTransitionError, NotFound, RuntimeNotApplicable
from orchestrator.messages import task_id
from orchestrator.settings import Settings
from orchestrator.states import RunStatus, StepStatus

ACTIONS = tuple(states.CONTROLS)


@dataclass(frozen=True)
class Actor:
    """Who acted, for the audit trail: the caller's token and an optional ``?triggered_by=``."""

    token_id: str
    triggered_by: str | None = None

    def audit(self) -> dict[str, Any]:
        return {"token_id": self.token_id, "triggered_by": self.triggered_by}


@dataclass
class Effects:
    """What to do after the commit: wake the scheduler, revoke tasks; ``run_id`` is the run acted on
    (a new one for rerun)."""

    run_id: str
    ring: bool = False
    revoke: list[str] = field(default_factory=list)
    created: bool = False


def lock_owned_run(session: Session, tenant_id: str, run_id: str):
    """Lock the tenant's run; NotFound for a run of another tenant or none at all."""
    run = repo.lock_run(session, run_id)
    if run is None or run.tenant_id != tenant_id:
        raise NotFound(f"run {run_id!r} not found")
    return run


def check_applicable(session: Session, catalog: DefinitionCatalog, run) -> Definition:
    """The run's definition; RuntimeNotApplicable if its workflow is conversational."""
    definition = catalog.get(session, (run.tenant_id, run.workflow_id, run.workflow_version))
    if definition.kind == "conversational":
        raise RuntimeNotApplicable(f"workflow {run.workflow_id!r} is conversational; run actions do not apply")
    return definition


def control(
    session: Session,
    settings: Settings,
    catalog: DefinitionCatalog,
    tenant_id: str,
    run_id: str,
    action: str,
    actor: Actor,
    body: dict[str, Any],
) -> Effects:
    """Apply ``action`` to the run; InvalidTransitionError (409) when its status does not allow it."""
    if action not in states.CONTROLS:
        raise NotFound(f"no run action {action!r}; actions are {list(ACTIONS)}")
    run = lock_owned_run(session, tenant_id, run_id)
    definition = check_applicable(session, catalog, run)
    try:
        states.apply_control(action, RunStatus(run.status))
    except states.InvalidTransition as exc:
        raise InvalidTransitionError(
            f"cannot {action} a run that is {run.status}; allowed from {exc.allowed_from}",
            {"status": run.status, "allowed_from": exc.allowed_from, "action": action},
        ) from None
    return _HANDLERS[action](session, settings, run, definition, actor, body)


def _pause(session, settings, run, definition, actor: Actor, body) -> Effects:
    _no_body(body)
    changes = RunChanges(run, run_target=RunStatus.PAUSED)
    changes.event("run_paused", **actor.audit())
    repo.apply_run_changes(session, changes)
    return Effects(run.id)


def _resume(session, settings, run, definition, actor: Actor, body) -> Effects:
    """Back to running, optionally with raised limits (``{"limits": {"tokens": N, ...}}``); steps that
    stopped at the budget are dispatched again and go on from their checkpoints."""
    unknown = set(body) - {"limits"}
    if unknown:
        raise InvalidRequest(f"unknown fields for resume: {sorted(unknown)}; allowed: ['limits']")
    # The scheduler's next pass decides whether the run is really waiting.
    changes = RunChanges(run, run_target=RunStatus.RUNNING, run_values={"has_work": True})
    if "limits" in body:
        try:
            raised = policy.Limits.model_validate(body["limits"]).model_dump(exclude_unset=True)
        except ValidationError as exc:
            raise InvalidRequest(f"'limits': {exc.errors(include_url=False)[0]['msg']}") from None
        changes.run_values["limits"] = {**(run.limits or {}), **raised}
    views = repo.steps_for_update(session, [run.id])[run.id]
    repo.update_steps(session, run.id, [v.step_id for v in views if v.waiting_on == "budget"], StepStatus.PENDING,
                      only_from=[StepStatus.WAITING], waiting_on=None)
    changes.event("run_resumed", limits=changes.run_values.get("limits"), **actor.audit())
    repo.apply_run_changes(session, changes)
    return Effects(run.id, ring=True)


def _cancel(session, settings, run, definition, actor: Actor, body) -> Effects:
    unknown = set(body) - {"reason", "mode"}
    if unknown:
        raise InvalidRequest(f"unknown fields for cancel: {sorted(unknown)}; allowed: ['mode', 'reason']")
    mode = body.get("mode", "immediate")
    if mode not in ("immediate", "graceful"):
        raise InvalidRequest("'mode' must be 'immediate' or 'graceful'")
    reason = body.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise InvalidRequest("'reason' must be a string")
    views = repo.steps_for_update(session, [run.id])[run.id]
    # Immediate stops everything in flight; graceful lets running attempts finish and be recorded.
    stop = {StepStatus.QUEUED, StepStatus.RETRYING, StepStatus.WAITING}
    if mode == "immediate":
        stop.add(StepStatus.RUNNING)
    stopped = {"code": "run_stopped", "message": reason or "the run was cancelled", "retryable": False}
    changes = RunChanges(run, run_target=RunStatus.CANCELLED)
    cancelled = repo.update_steps(
        session, run.id, [v.step_id for v in views if v.status in stop], StepStatus.CANCELLED,
        cancel_requested=True, error=stopped, completed_at=db_now(), lease_expires_at=None, due_at=None,
    )
    effects = Effects(run.id)
    for view in views:
        if view.step_id in cancelled:
            changes.event("step_cancelled", view.step_id, view.attempt, reason="run_stopped")
            if view.status in (StepStatus.QUEUED, StepStatus.RUNNING):
                effects.revoke.append(task_id(run.id, view.step_id, view.attempt))
    for step_id in repo.update_steps(
        session, run.id, [v.step_id for v in views if v.status is StepStatus.PENDING], StepStatus.SKIPPED,
        skipped_reason="run_cancelled", completed_at=db_now(),
    ):
        changes.event("step_completed", step_id, None, skipped=True, reason="run_cancelled")
    repo.close_open_requests(session, run.id)
    changes.run_values.update(
        completed_at=db_now(), waiting_on=None,
        error={"code": "cancelled", "message": reason or "the run was cancelled", "step_id": None},
    )
    changes.event("run_cancelled", mode=mode, reason=reason, **actor.audit())
    repo.apply_run_changes(session, changes)
    return effects


def _retry(session, settings, run, definition, actor: Actor, body) -> Effects:
    """The same run goes on from where it failed: failed, cancelled and skipped steps start over."""
    _no_body(body)
    views = repo.steps_for_update(session, [run.id])[run.id]
    again = [v.step_id for v in views if v.status in (StepStatus.FAILED, StepStatus.CANCELLED, StepStatus.SKIPPED)]
    changes = RunChanges(run, run_target=RunStatus.QUEUED)
    outcomes.reopen_steps(session, run.id, definition, views, again)
    changes.run_values.update(
        attempt=run.attempt + 1, error=None, completed_at=None, has_work=True, waiting_on=None
    )
    changes.event("run_retried", attempt=run.attempt + 1, steps=again, **actor.audit())
    repo.apply_run_changes(session, changes)
    return Effects(run.id, ring=True)


def _rerun(session, settings, run, definition, actor: Actor, body) -> Effects:
    """A new run of the same workflow version with the same input."""
    _no_body(body)
    new_run, _ = service.start_run(
        session, settings, run.tenant_id, run.workflow_id, run.workflow_version, run.input,
        trigger_type="rerun", triggered_by=actor.triggered_by or actor.token_id, retry_of=run.id,
    )
    changes = RunChanges(run)
    changes.event("run_rerun", new_run_id=new_run.id, **actor.audit())
    repo.apply_run_changes(session, changes)
    return Effects(new_run.id, ring=True, created=True)


def _no_body(body: dict) -> None:
    if body:
        raise InvalidRequest(f"this action takes no body fields; got {sorted(body)}")


_HANDLERS = {"pause": _pause, "resume": _resume, "cancel": _cancel, "retry": _retry, "rerun": _rerun}


