"""Operators' actions on a run, at the edge: pause, resume, cancel, retry, rerun.

Each locks the run, reads its steps, lets the pure core decide (core.controls) and hands the
transition to the one writer, in the caller's transaction: a fact first. The returned Effects are the
signal second: whom to wake and which tasks to revoke after the commit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from orchestrator import service, states, writer
from orchestrator.catalog import DefinitionCatalog
from orchestrator.core import controls as decide
from orchestrator.core.inputs import Actor, Control
from orchestrator.core.snapshot import RunState
from orchestrator.db import repository as repo
from orchestrator.definitions import Definition
from orchestrator.errors import InvalidRequest, InvalidTransitionError, NotFound, RuntimeNotApplicable
from orchestrator.settings import Settings

__all__ = ["ACTIONS", "Actor", "ControlRequest", "Effects", "check_applicable", "control", "locked_state"]

ACTIONS = tuple(states.CONTROLS)
# The body fields each action takes (their types are checked where the request is parsed).
ACTION_FIELDS = {"pause": (), "resume": ("limits",), "cancel": ("mode", "reason"), "retry": (), "rerun": ()}


@dataclass(frozen=True)
class ControlRequest:
    """An operator's action on a tenant's run, with its body's fields."""

    tenant_id: str
    run_id: str
    action: str
    actor: Actor
    body: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Effects:
    """What to do after the commit: wake the scheduler, revoke tasks; ``run_id`` is the run acted on
    (a new one for rerun)."""

    run_id: str
    ring: bool = False
    revoke: list[str] = field(default_factory=list)
    created: bool = False


def locked_state(session: Session, catalog: DefinitionCatalog, tenant_id: str, run_id: str
                 ) -> tuple[RunState, Definition]:
    """The tenant's run, locked, with every step, and its definition; NotFound for a run of another
    tenant or none at all, RuntimeNotApplicable if its workflow is conversational."""
    run = repo.lock_run(session, run_id)
    if run is None or run.tenant_id != tenant_id:
        raise NotFound(f"run {run_id!r} not found")
    definition = check_applicable(session, catalog, run)
    return RunState.from_row(run, repo.steps_for_update(session, [run_id])[run_id]), definition


def check_applicable(session: Session, catalog: DefinitionCatalog, run) -> Definition:
    """The run's definition; RuntimeNotApplicable if its workflow is conversational."""
    definition = catalog.get(session, (run.tenant_id, run.workflow_id, run.workflow_version))
    if definition.kind == "conversational":
        raise RuntimeNotApplicable(f"workflow {run.workflow_id!r} is conversational; run actions do not apply")
    return definition


def control(session: Session, catalog: DefinitionCatalog, request: ControlRequest, *, settings: Settings) -> Effects:
    """Apply the request's action to the run; InvalidTransitionError (409) when its status does not
    allow it, InvalidRequest for body fields the action does not take."""
    if request.action not in states.CONTROLS:
        raise NotFound(f"no run action {request.action!r}; actions are {list(ACTIONS)}")
    state, definition = locked_state(session, catalog, request.tenant_id, request.run_id)
    try:
        states.apply_control(request.action, state.status)
    except states.InvalidTransition as exc:
        raise InvalidTransitionError(
            f"cannot {request.action} a run that is {state.status}; allowed from {exc.allowed_from}",
            {"status": state.status.value, "allowed_from": exc.allowed_from, "action": request.action},
        ) from None
    _check_fields(request)
    options = dict(request.body)
    if request.action == "rerun":
        new_run = service.start_run(
            session, settings, state.tenant_id, state.workflow_id, state.input, version=state.workflow_version,
            trigger_type="rerun", triggered_by=request.actor.name, retry_of=state.id,
        ).run
        options["new_run_id"] = new_run.id
    written = writer.apply(session, decide.on_control(state, definition, Control(request.action, request.actor,
                                                                                 options)))
    if request.action == "rerun":
        return Effects(options["new_run_id"], ring=True, created=True)
    revoke = list(written.revoke) + _reach_children(session, catalog, request, settings)
    return Effects(state.id, ring=written.wakes_scheduler or bool(revoke), revoke=revoke)


# The actions on a parent that reach its live child runs (and theirs).
REACHES_CHILDREN = ("pause", "resume", "cancel")


def _reach_children(session: Session, catalog: DefinitionCatalog, request: ControlRequest,
                    settings: Settings) -> list[str]:
    """Apply a pause, resume or cancel to the run's live children too (each through the same state
    machine; a child already in the state asked for is left as it is); the tasks to revoke."""
    if request.action not in REACHES_CHILDREN:
        return []
    revoke: list[str] = []
    for child_id in repo.live_children(session, [request.run_id]):
        child = dataclasses.replace(request, run_id=child_id)
        try:
            revoke += control(session, catalog, child, settings=settings).revoke
        except InvalidTransitionError:
            continue  # e.g. resume of a child that is not paused
    return revoke


def _check_fields(request: ControlRequest) -> None:
    allowed = ACTION_FIELDS[request.action]
    unknown = sorted(set(request.body) - set(allowed))
    if not unknown:
        return
    if not allowed:
        raise InvalidRequest(f"this action takes no body fields; got {sorted(request.body)}")
    raise InvalidRequest(f"unknown fields for {request.action}: {unknown}; allowed: {sorted(allowed)}")
