"""Bulk actions: POST /runs/bulk/{action} applies one operator action to every run a filter selects.

Each run goes through the same path as the single-run action (controls.control, forks.fork_run), in a
transaction of its own, so no transaction holds more than one run's lock and a run in the wrong state
is one entry of ``skipped``, never a failure of the whole request. A dry run selects and checks the
runs' statuses against the same table (states.CONTROLS) and changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy.orm import Session, sessionmaker

from orchestrator import controls, forks, service, states
from orchestrator.catalog import DefinitionCatalog
from orchestrator.core.inputs import Actor
from orchestrator.db import repository as repo
from orchestrator.db.session import transaction
from orchestrator.errors import Conflict, InvalidRequest, NotFound, RuntimeNotApplicable
from orchestrator.settings import Settings
from orchestrator.states import TERMINAL_RUN, RunStatus

ACTIONS = ("cancel", "pause", "resume", "retry", "rerun", "fork")
MAX_LIMIT = 1000
# The body fields each action takes besides filter, dry_run and limit.
ACTION_FIELDS: dict[str, tuple[str, ...]] = {**controls.ACTION_FIELDS, "fork": forks.FIELDS}


class Signals(Protocol):
    """What the caller does after each run's commit: wake the scheduler, revoke, publish first steps."""

    def controlled(self, effects: controls.Effects) -> None: ...

    def started(self, started: service.Started) -> None: ...


@dataclass(frozen=True)
class BulkRequest:
    """One action on the runs ``where`` selects (at most ``limit`` of them, newest first)."""

    tenant_id: str
    action: str
    actor: Actor
    where: repo.RunFilter
    dry_run: bool = False
    limit: int = 100
    fields: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class BulkResult:
    """``matched``: every run the filter selects; ``runs``: the runs acted on (for rerun and fork, the new
    runs), or on a dry run the runs the action would act on; ``skipped``: the others, with why."""

    matched: int
    applied: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {"matched": self.matched, "applied": self.applied, "skipped": self.skipped, "runs": self.runs}


def allowed_from(action: str) -> frozenset[RunStatus]:
    """The run statuses ``action`` is taken from (a fork, like a rerun, needs a run that ended)."""
    return TERMINAL_RUN if action == "fork" else states.CONTROLS[action].allowed_from


def skip_reason(action: str, status: str) -> str | None:
    """Why ``action`` does not apply to a run that is ``status``, or None if it does."""
    allowed = allowed_from(action)
    if RunStatus(status) in allowed:
        return None
    return f"cannot {action} a run that is {status}; allowed from {sorted(s.value for s in allowed)}"


def check_request(action: str, fields: Mapping[str, Any]) -> None:
    """NotFound (listing the actions) for an unknown action; InvalidRequest for a field the action does
    not take, or a fork without ``from_step``."""
    if action not in ACTIONS:
        raise NotFound(f"no bulk action {action!r}; actions are {list(ACTIONS)}", {"valid_actions": list(ACTIONS)})
    unknown = sorted(set(fields) - set(ACTION_FIELDS[action]))
    if unknown:
        raise InvalidRequest(f"{action} does not take {unknown}; it takes {sorted(ACTION_FIELDS[action])} beside "
                             f"filter, dry_run and limit", {"field": unknown[0], "unknown": unknown})
    if action == "fork" and not fields.get("from_step"):
        raise InvalidRequest("a bulk fork needs 'from_step', the step each run is forked from", {"field": "from_step"})


def run_bulk(sessions: sessionmaker[Session], catalog: DefinitionCatalog, settings: Settings, request: BulkRequest,
             signals: Signals) -> BulkResult:
    """Apply the request's action to each selected run in turn, each in its own transaction."""
    check_request(request.action, request.fields)
    with transaction(sessions) as session:
        result = BulkResult(matched=repo.count_matching_runs(session, request.tenant_id, request.where))
        selected = [(r.id, r.status) for r in repo.matching_runs(session, request.tenant_id, request.where,
                                                                 request.limit)]
    act = _fork_one if request.action == "fork" else _control_one
    stored: dict[tuple[str, int], int] = {}
    for run_id, status in selected:
        reason = skip_reason(request.action, status)
        if reason is None and not request.dry_run:
            try:
                result.runs.append(act(sessions, catalog, settings, request, run_id, signals=signals, stored=stored))
                result.applied += 1
                continue
            except (Conflict, InvalidRequest, NotFound, RuntimeNotApplicable) as exc:
                reason = exc.message
        if reason is None:
            result.runs.append(run_id)  # a dry run: the action would apply
        else:
            result.skipped.append({"run_id": run_id, "reason": reason})
    return result


def _control_one(sessions, catalog, settings, request: BulkRequest, run_id: str, *, signals: Signals,
                 stored) -> str:
    with transaction(sessions) as session:
        effects = controls.control(session, catalog, controls.ControlRequest(
            request.tenant_id, run_id, request.action, request.actor, dict(request.fields)), settings=settings)
    signals.controlled(effects)
    return effects.run_id


def _fork_one(sessions, _catalog, settings, request: BulkRequest, run_id: str, *, signals: Signals,
              stored: dict[tuple[str, int], int]) -> str:
    changes = {k: v for k, v in request.fields.items() if k != "from_step"}
    # A definition stored for the overrides is shared by the next forks only once its transaction committed.
    pending = dict(stored)
    with transaction(sessions) as session:
        started = forks.fork_run(session, settings, forks.ForkRequest(
            request.tenant_id, run_id, request.fields["from_step"], request.actor, changes), stored=pending)
        new_id = started.run.id
    stored.update(pending)
    signals.started(started)
    return new_id
