"""Use cases the API calls: publish a workflow, start a run. Validation first, then one write."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jsonschema
from sqlalchemy.orm import Session

from orchestrator import ids, validation
from orchestrator.catalog import DefinitionCatalog, WorkflowHead
from orchestrator.core import start
from orchestrator.core.fork import ForkPlan
from orchestrator.core.inputs import Env
from orchestrator.core.reports import empty_usage
from orchestrator.core.snapshot import StepState
from orchestrator.core.transition import Transition
from orchestrator.core.vocabulary import EventType
from orchestrator.db import repository as repo
from orchestrator.db.models import Run, Step, WorkflowVersion
from orchestrator.db.types import db_now
from orchestrator.definitions import Definition, input_problems, parse_definition
from orchestrator.errors import (
    DefinitionInvalid,
    IdempotencyConflict,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    RuntimeNotApplicable,
    WorkflowArchived,
)
from orchestrator.messages import StepMessage
from orchestrator.settings import Settings
from orchestrator.states import RunStatus, StepStatus


def publish_workflow(session: Session, settings: Settings, tenant_id: str, workflow_id: str, raw: Any) -> WorkflowVersion:
    """Validate a definition and store it as the workflow's next version; DefinitionInvalid if refused.

    Publishing restores an archived workflow, and makes the new version's triggers and retention_days
    the workflow's."""
    definition = check_workflow(session, settings, tenant_id, workflow_id, raw)
    version = repo.publish_workflow(
        session, tenant_id, workflow_id, name=definition.name, kind=definition.kind,
        definition=definition.model_dump(mode="json", exclude_unset=True),
    )
    repo.set_workflow_lifecycle(session, tenant_id, workflow_id, retention_days=definition.retention_days,
                                events=[trigger.event for trigger in definition.triggers])
    return version


def check_workflow(session: Session, settings: Settings, tenant_id: str, workflow_id: str, raw: Any) -> Definition:
    """Every check of a publish, storing nothing (``PUT /workflows/{id}?dry_run=true`` too): the definition
    gate with the installation's models (orchestrator.validation), and the workflows its `workflow` steps
    call. The parsed definition; DefinitionInvalid naming every problem."""
    definition = parse_definition(raw, settings.max_steps_per_definition, models=validation.models_of(settings))
    _check_child_workflows(session, tenant_id, workflow_id, definition)
    return definition


def _check_child_workflows(session: Session, tenant_id: str, workflow_id: str, definition: Definition) -> None:
    """A `workflow` step must name a workflow of the tenant (or the one being published: a workflow may
    call itself, within SWITCHYARD_MAX_RUN_DEPTH); DefinitionInvalid naming each that does not."""
    problems = [f"steps.{i}.workflow_id: no workflow {step.workflow_id!r} in this tenant; publish it first"
                for i, step in enumerate(definition.steps)
                if step.type == "workflow" and step.workflow_id != workflow_id
                and repo.get_workflow(session, tenant_id, step.workflow_id) is None]
    if problems:
        raise DefinitionInvalid("invalid workflow definition: " + "; ".join(problems), {"problems": problems})


def request_hash(body: Any) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def start_run(
    session: Session,
    settings: Settings,
    tenant_id: str,
    workflow_id: str,
    run_input: Any,
    *,
    version: int | None = None,
    idempotency_key: str | None = None,
    body_hash: str | None = None,
    trigger_type: str = "api",
    triggered_by: str | None = None,
    retry_of: str | None = None,
    first_pass: bool = False,
    fork: ForkPlan | None = None,
    parent: ParentLink | None = None,
    catalog: DefinitionCatalog | None = None,
    priority: int | None = None,
) -> Started:
    """Create a run pinned to a workflow version (the latest if ``version`` is None).

    With ``first_pass``, the scheduler's first pass over the run is taken in the same write when it is
    plain (core.start.on_start: it only queues worker steps): the run is written started, its first
    steps queued with their outbox rows, and the caller publishes ``Started.messages`` after the
    commit (dispatch.publish_queued); otherwise the scheduler starts the run.

    With ``fork`` (orchestrator.forks), the run is that fork: its reused steps are written succeeded with
    the original's outputs, and only the others run.

    ``catalog``: the process's parsed definitions and workflow heads (none kept without one). The run
    is written in one statement (repository.starts) guarded by the head it was built from (its latest
    version: the workflow's name in the answer is the latest version's, even for a pinned version); a
    head found stale is read again and the start built anew.

    The same Idempotency-Key with the same body returns the first run (created False); with a
    different body it raises IdempotencyConflict.
    """
    if idempotency_key:
        earlier = _run_of_key(session, tenant_id, idempotency_key, body_hash)
        if earlier is not None:
            return Started(earlier, False)
    catalog = catalog or DefinitionCatalog()
    fresh = False
    for _ in range(_STALE_HEAD_TRIES):
        head = _live_head(session, catalog, tenant_id, workflow_id, fresh=fresh)
        number, definition = _runnable_version(session, catalog, head, version)
        _check_input(settings, definition, run_input,
                     catalog.input_validator((tenant_id, workflow_id, number), definition))
        new = _new_run(settings, definition, _run_row(
            tenant_id, workflow_id, number, run_input, idempotency_key=idempotency_key, body_hash=body_hash,
            trigger_type=trigger_type, triggered_by=triggered_by, retry_of=retry_of, fork=fork, parent=parent,
        ), fork, first_pass=first_pass, latest_version=head.latest_version)
        new.run.priority = priority or definition.priority  # flow control: the order of its steps' admission
        messages = repo.insert_new_run(session, new)
        if messages is not None:
            return Started(new.run, True, messages, new.steps, head.name)
        if idempotency_key:
            winner = _run_of_key(session, tenant_id, idempotency_key, body_hash)
            if winner is not None:  # another request with the same key won the race
                return Started(winner, False)
        fresh = True
    raise RuntimeError(f"workflow {workflow_id!r} changed under {_STALE_HEAD_TRIES} starts in a row; start it again")


# A start built on a stale head is built again on the head read anew: more than this many changes of
# one workflow during one start is not a race worth more tries.
_STALE_HEAD_TRIES = 3


def _run_row(tenant_id: str, workflow_id: str, number: int, run_input: Any, *, idempotency_key: str | None,
             body_hash: str | None, trigger_type: str, triggered_by: str | None, retry_of: str | None,
             fork: ForkPlan | None, parent: ParentLink | None) -> Run:
    """The new run's row, queued."""
    return Run(
        id=ids.new_id("run"), tenant_id=tenant_id, workflow_id=workflow_id, workflow_version=number,
        status=RunStatus.QUEUED.value, input=run_input, usage=empty_usage(), trigger_type=trigger_type,
        triggered_by=triggered_by, retry_of=retry_of, attempt=1, idempotency_key=idempotency_key,
        request_hash=body_hash, has_work=True, last_seq=0,
        forked_from_run_id=fork.run_id if fork else None, forked_from_step_id=fork.from_step if fork else None,
        **(dict(parent_run_id=parent.run_id, parent_step_id=parent.step_id, depth=parent.depth) if parent else {}),
    )


def _new_run(settings: Settings, definition: Definition, run: Run, fork: ForkPlan | None, *, first_pass: bool,
             latest_version: int | None) -> repo.NewRun:
    """The rows of the new run ``run``: its steps, its log and, with ``first_pass``, what that pass queued."""
    reused = fork.reused if fork else {}
    events = [_created_event(run, fork)]
    steps = _pending_steps(settings, definition, run.id, reused)
    first = _first_pass(settings, definition, run, steps, reused) if first_pass else None
    if first is not None:
        events += [event.row() for event in first.events]
    return repo.NewRun(run, steps, events, list(first.messages) if first is not None else [], latest_version)


def _created_event(run: Run, fork: ForkPlan | None) -> dict[str, Any]:
    data = {"workflow_id": run.workflow_id, "version": run.workflow_version, "trigger_type": run.trigger_type}
    if fork is not None:
        data["forked_from"] = {"run_id": fork.run_id, "step_id": fork.from_step}
        data["reused"] = list(fork.reused)
    return {"type": EventType.RUN_CREATED.value, "step_id": None, "attempt": None, "data": data}


@dataclass(frozen=True)
class ParentLink:
    """A child run's place: the parent run and its `workflow` step that started it, and its depth."""

    run_id: str
    step_id: str
    depth: int


@dataclass(frozen=True)
class Started:
    """A start's answer: the run, whether this call created it (an Idempotency-Key answers with the
    run it started first), and the messages of the first steps it queued, to publish after the commit."""

    run: Run
    created: bool
    messages: list[StepMessage] = field(default_factory=list)
    # A created run's steps and its workflow's name: the answer to its start, with no read back.
    steps: list[Step] = field(default_factory=list)
    workflow_name: str | None = None


def _first_pass(settings: Settings, definition: Definition, run: Run, steps: list[Step],
                reused: Mapping[str, Any]) -> Transition | None:
    """The scheduler's first pass over the new run, if plain (core.start.on_start), applied to its rows."""
    state = start.new_run(run_id=run.id, tenant_id=run.tenant_id, workflow_id=run.workflow_id,
                          version=run.workflow_version, run_input=run.input, reused=reused,
                          steps=[StepState(s.step_id, s.type, StepStatus(s.status), 0, s.max_attempts, s.queue)
                                 for s in steps])
    first = start.on_start(state, definition, Env(prices=settings.prices, max_items=settings.max_for_each_items,
                       max_depth=settings.max_run_depth))
    if first is None:
        return None
    run.status, run.started_at, run.has_work = first.after.status.value, db_now(), False
    for step in steps:
        after = first.after.step(step.step_id)
        if after.status is StepStatus.QUEUED:
            step.status, step.attempt, step.queued_at = after.status.value, after.attempt, db_now()
    return first


def _run_of_key(session: Session, tenant_id: str, idempotency_key: str, body_hash: str | None) -> Run | None:
    """The run this Idempotency-Key started already, if any; IdempotencyConflict if another body started it."""
    existing = repo.find_run_by_idempotency_key(session, tenant_id, idempotency_key)
    if existing is not None and existing.request_hash != body_hash:
        raise IdempotencyConflict(
            "this Idempotency-Key was used with a different request body; use a new key",
            {"run_id": existing.id},
        )
    return existing


def _live_head(session: Session, catalog: DefinitionCatalog, tenant_id: str, workflow_id: str, *,
               fresh: bool) -> WorkflowHead:
    """The workflow's head (read now if ``fresh``); NotFound if there is no such workflow, WorkflowArchived
    if it is archived (as read now: a cached archived head may have been restored since)."""
    head = catalog.head(session, tenant_id, workflow_id, fresh=fresh)
    if head is not None and head.archived_at is not None and not fresh:
        head = catalog.head(session, tenant_id, workflow_id, fresh=True)
    if head is None:
        raise NotFound(f"workflow {workflow_id!r} not found; publish it with PUT /api/v1/workflows/{workflow_id}")
    if head.archived_at is not None:
        raise WorkflowArchived(f"workflow {workflow_id!r} is archived; publish a new version with "
                               f"PUT /api/v1/workflows/{workflow_id} to start it again", {"workflow_id": workflow_id})
    return head


def _runnable_version(
    session: Session, catalog: DefinitionCatalog, head: WorkflowHead, version: int | None
) -> tuple[int, Definition]:
    """The number of the version to run (the latest if ``version`` is None) and its definition.

    NotFound if that version does not exist; RuntimeNotApplicable if the workflow is conversational.
    """
    number = version or head.latest_version
    try:
        definition = catalog.get(session, (head.tenant_id, head.workflow_id, number))
    except KeyError:
        raise NotFound(f"workflow {head.workflow_id!r} has no version {number}; "
                       f"latest is {head.latest_version}") from None
    if definition.kind == "conversational":
        raise RuntimeNotApplicable(f"workflow {head.workflow_id!r} is conversational; it has no runs")
    return number, definition


def _check_input(settings: Settings, definition: Definition, run_input: Any,
                 validator: jsonschema.Draft202012Validator | None) -> None:
    """PayloadTooLarge if the input is over the size limit as JSON; InvalidRequest if it does not
    match the workflow's input_schema."""
    size = len(json.dumps(run_input, separators=(",", ":")))
    if size > settings.max_input_bytes:
        raise PayloadTooLarge(f"the run's input is {size} bytes as JSON, over the limit of {settings.max_input_bytes}",
                              {"field": "input", "limit_bytes": settings.max_input_bytes, "size_bytes": size})
    problems = input_problems(definition, run_input, validator)
    if problems:
        raise InvalidRequest("input does not match the workflow's input_schema: " + "; ".join(problems), {"problems": problems})


def _pending_steps(settings: Settings, definition: Definition, run_id: str, reused: Mapping[str, Any]) -> list[Step]:
    """A new run's steps, in the definition's order, none of them started; a fork's ``reused`` steps
    succeeded already, with the original's outputs (they never run, so no usage is charged)."""
    return [
        Step(
            run_id=run_id, step_id=step.id, position=i, type=step.type, attempt=0,
            status=(StepStatus.SUCCEEDED if step.id in reused else StepStatus.PENDING).value,
            output=reused.get(step.id), reused=step.id in reused,
            max_attempts=definition.retry_policy(step).max_attempts, queue=step.queue or settings.default_queue,
            cancel_requested=False,
        )
        for i, step in enumerate(definition.steps)
    ]
