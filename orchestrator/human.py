"""People and the outside world move waiting runs on, at the edge: approvals, answers, inbound events.

Each locks the run, records the person's decision on its request's row, and lets the pure core decide
what it does to the run (core.people); the one writer applies that, so fail-fast and the event log
behave exactly as for a worker's report.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from orchestrator import writer
from orchestrator.catalog import DefinitionCatalog
from orchestrator.controls import Effects, locked_state
from orchestrator.core import people as decide
from orchestrator.core.inputs import Actor, Env
from orchestrator.core.people import DECISIONS, ApprovalDecision, EventArrival
from orchestrator.core.snapshot import RunState
from orchestrator.db import repository as repo
from orchestrator.errors import InvalidRequest, InvalidTransitionError, NotFound

__all__ = ["DECISIONS", "AnswerRequest", "ApprovalRequest", "EventRequest", "answer_question", "decide_approval",
           "deliver_event"]


@dataclass(frozen=True)
class ApprovalRequest:
    tenant_id: str
    run_id: str
    approval_id: str
    decision: str  # approve | reject | request_changes
    comment: str | None
    actor: Actor


@dataclass(frozen=True)
class AnswerRequest:
    tenant_id: str
    run_id: str
    question_id: str
    answer: Any
    actor: Actor


@dataclass(frozen=True)
class EventRequest:
    tenant_id: str
    key: str
    name: str | None
    payload: Any
    actor: Actor


def decide_approval(session: Session, catalog: DefinitionCatalog, request: ApprovalRequest) -> Effects:
    """Approve (the run goes on), reject (the run fails with approval_rejected) or request changes
    (the approval's upstream steps run again with ``approval.comment`` and it asks again)."""
    if request.decision not in DECISIONS:
        raise NotFound(f"no approval decision {request.decision!r}; use one of {list(DECISIONS)}")
    state, definition = locked_state(session, catalog, request.tenant_id, request.run_id)
    approval = repo.get_approval(session, request.run_id, request.approval_id)
    if approval is None:
        raise NotFound(f"approval {request.approval_id!r} not found in run {request.run_id!r}")
    decision = ApprovalDecision(approval.id, approval.step_id, approval.round, approval.status, approval.call,
                                request.decision, request.comment, request.actor)
    decide.check_approval(state, definition, decision)
    repo.decide_approval(session, approval.id, DECISIONS[request.decision], request.comment, request.actor.name)
    checkpoint = repo.step_checkpoint(session, state.id, approval.step_id) if approval.call is not None else None
    written = writer.apply(session, decide.on_approval(state, definition, decision, Env(), checkpoint=checkpoint))
    return Effects(state.id, ring=True, revoke=written.revoke)


def answer_question(session: Session, catalog: DefinitionCatalog, request: AnswerRequest) -> Effects:
    """Answer an open question: a `question` step succeeds with it; an agent goes on with it."""
    state, definition = locked_state(session, catalog, request.tenant_id, request.run_id)
    question = repo.get_question(session, request.run_id, request.question_id)
    if question is None:
        raise NotFound(f"question {request.question_id!r} not found in run {request.run_id!r}")
    if not repo.answer_question(session, request.question_id, request.answer, request.actor.name):
        raise InvalidTransitionError(f"question {request.question_id} is already {question.status}",
                                     {"status": question.status, "allowed_from": ["open"]})
    step = state.step(question.step_id)
    checkpoint = repo.step_checkpoint(session, state.id, step.step_id) if step.type == "agent" else None
    transition = decide.on_answer(state, definition, step_id=step.step_id, question_id=request.question_id,
                                  answer=request.answer, actor=request.actor, env=Env(), checkpoint=checkpoint)
    written = writer.apply(session, transition)
    return Effects(state.id, ring=True, revoke=written.revoke)


def deliver_event(session: Session, catalog: DefinitionCatalog, request: EventRequest, *,
                  keep_s: float) -> tuple[str, list[dict[str, str]]]:
    """Keep the event for ``keep_s`` seconds and complete every step waiting on its key now.

    Returns the event id and the (run, step) pairs it was delivered to.
    """
    if not isinstance(request.key, str) or not 1 <= len(request.key) <= 200:
        raise InvalidRequest("'correlation_key' must be a string of 1-200 characters")
    event_id = repo.insert_inbound_event(session, request.tenant_id, request.key, name=request.name,
                                         payload=request.payload, keep_s=keep_s)
    delivered = []
    for run_id in repo.runs_waiting_on_key(session, request.tenant_id, request.key):
        run = repo.lock_run(session, run_id)
        definition = catalog.get(session, (run.tenant_id, run.workflow_id, run.workflow_version))
        state = RunState.from_row(run, repo.steps_for_update(session, [run_id])[run_id])
        keys = {s.step_id: repo.step_fields(session, run_id, s.step_id).correlation_key
                for s in state.steps.values() if s.status.value == "waiting"}
        arrival = EventArrival(event_id, request.key, request.name, request.payload, keys, request.actor)
        transition, steps = decide.on_event(state, definition, arrival, Env())
        writer.apply(session, transition)
        delivered += [{"run_id": run_id, "step_id": step_id} for step_id in steps]
    return event_id, delivered
