"""Forks at the edge: POST /runs/{id}/fork.

Reads the original run and its steps, builds the fork's input (as given, or the original's with a JSON
merge patch) and definition (the version asked for, with the request's step overrides, validated as a
publish validates), lets the pure core decide which steps are reused (core.fork.plan) and creates the
new run through the one start path (service.start_run), in the caller's transaction.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from orchestrator import service, validation
from orchestrator.core import fork
from orchestrator.core.inputs import Actor
from orchestrator.db import repository as repo
from orchestrator.db.models import Run
from orchestrator.definitions import Definition, parse_definition
from orchestrator.errors import DefinitionInvalid, InvalidRequest, InvalidTransitionError, NotFound
from orchestrator.settings import Settings
from orchestrator.states import TERMINAL_RUN, RunStatus, StepStatus

# The fields of a fork's request beside the run it forks (the bulk action takes them too).
FIELDS = ("from_step", "input", "input_patch", "steps", "version")
FORKABLE = sorted(s.value for s in TERMINAL_RUN)


@dataclass(frozen=True)
class ForkRequest:
    """A fork of a tenant's run from ``from_step``. ``changes`` holds what the body gave of ``input``,
    ``input_patch``, ``steps`` (overrides: {step_id: {field: value}}) and ``version``."""

    tenant_id: str
    run_id: str
    from_step: str
    actor: Actor
    changes: Mapping[str, Any] = field(default_factory=dict)


def fork_run(session: Session, settings: Settings, request: ForkRequest, *,
             stored: MutableMapping[tuple[str, int], int] | None = None) -> service.Started:
    """The fork of the request's run, created (first steps queued as a start queues them).

    NotFound for a run of another tenant or a version that does not exist; InvalidTransitionError if
    the run is not terminal; InvalidRequest naming the field for a bad input, override or from_step.
    ``stored`` keeps, across calls (a bulk fork), the number of the definition stored for overrides of a
    (workflow, version), so forks of many runs with the same overrides share one.
    """
    original = repo.get_run(session, request.tenant_id, request.run_id)
    if original is None:
        raise NotFound(f"run {request.run_id!r} not found")
    if RunStatus(original.status) not in TERMINAL_RUN:
        raise InvalidTransitionError(
            f"cannot fork a run that is {original.status}; allowed from {FORKABLE}: wait for it to end, or cancel it",
            {"status": original.status, "allowed_from": FORKABLE, "action": "fork"})
    run_input = fork_input(original.input, request.changes)
    version, definition = _fork_definition(session, settings, original, request.changes, stored)
    recorded = {s.step_id: fork.Recorded(StepStatus(s.status), s.output)
                for s in repo.run_steps(session, original.id) if s.item_of is None}  # not a for-each's items
    try:
        plan = fork.plan(definition, run_id=original.id, from_step=request.from_step, original=recorded,
                         overridden=request.changes.get("steps") or {})
    except fork.ForkRefused as exc:
        raise InvalidRequest(exc.message, {"field": exc.field}) from None
    if version is None:
        version = _store(session, original, request.changes, definition, stored)
    return service.start_run(session, settings, original.tenant_id, original.workflow_id, run_input,
                             version=version, trigger_type="fork", triggered_by=request.actor.name,
                             first_pass=True, fork=plan)


def fork_input(original: Any, changes: Mapping[str, Any]) -> Any:
    """The fork's input: ``input`` as given, the original's with ``input_patch`` merged (RFC 7396), or the
    original's; InvalidRequest if both are given."""
    if "input" in changes and "input_patch" in changes:
        raise InvalidRequest("give either 'input' (the whole new input) or 'input_patch' (a JSON merge patch of "
                             "the original's), not both", {"field": "input_patch"})
    if "input" in changes:
        return changes["input"]
    if "input_patch" in changes:
        return fork.merge_patch(original, changes["input_patch"])
    return original


def _fork_definition(session: Session, settings: Settings, original: Run, changes: Mapping[str, Any],
                     stored: Mapping[tuple[str, int], int] | None) -> tuple[int | None, Definition]:
    """The version number the fork runs and its definition; the number is None when the request's
    step overrides make a definition not stored yet (``_store`` stores it once the fork is decided)."""
    number = changes.get("version") or original.workflow_version
    version = repo.get_version(session, original.tenant_id, original.workflow_id, number)
    if version is None:
        raise NotFound(f"workflow {original.workflow_id!r} has no version {number}",
                       {"field": "version"})
    overrides = changes.get("steps") or {}
    if not overrides:
        return number, Definition.model_validate(version.definition)
    try:
        raw = fork.apply_overrides(version.definition, overrides)
    except fork.ForkRefused as exc:
        raise InvalidRequest(exc.message, {"field": exc.field}) from None
    try:
        definition = parse_definition(raw, settings.max_steps_per_definition, models=validation.models_of(settings))
    except DefinitionInvalid as exc:
        problems = [_named(p, raw) for p in exc.details.get("problems", [])]
        # The definition was valid before the overrides: the problems are theirs, named by step id.
        fields = sorted({f"steps.{step_id}" for step_id in overrides
                         if len(overrides) == 1 or any(f"steps.{step_id}" in p or f"'{step_id}'" in p for p in problems)})
        raise InvalidRequest("the step overrides make the definition invalid: " + "; ".join(problems),
                             {"field": fields[0] if len(fields) == 1 else "steps", "problems": problems}) from None
    if definition.kind == "conversational":
        raise InvalidRequest(f"steps: the workflow {original.workflow_id!r} is conversational; it has no runs",
                             {"field": "steps"})
    return (stored or {}).get((original.workflow_id, number)), definition


def _store(session: Session, original: Run, changes: Mapping[str, Any], definition: Definition,
           stored: MutableMapping[tuple[str, int], int] | None) -> int:
    number = repo.store_fork_definition(session, original.tenant_id, original.workflow_id,
                                        definition.model_dump(mode="json", exclude_unset=True))
    if stored is not None:
        stored[(original.workflow_id, changes.get("version") or original.workflow_version)] = number
    return number


_STEP_INDEX = re.compile(r"\bsteps\.(\d+)\b")


def _named(problem: str, raw: Mapping[str, Any]) -> str:
    """A definition problem with its step named by id (``steps.s4.prompt``), as the fork's request names
    it, rather than by index (``steps.3.prompt``)."""
    steps = raw.get("steps") or []

    def by_id(match: re.Match) -> str:
        index = int(match.group(1))
        step = steps[index] if index < len(steps) else None
        return f"steps.{step['id']}" if isinstance(step, dict) and "id" in step else match.group(0)

    return _STEP_INDEX.sub(by_id, problem)
