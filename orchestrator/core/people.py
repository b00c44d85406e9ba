"""People and the outside world move waiting steps on, decided: an approval's decision, an answer to
a question, an inbound event delivered to the steps waiting on its key."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from orchestrator.core import controls, items, outcome
from orchestrator.core.inputs import Actor, Env
from orchestrator.core.reports import ErrorInfo, Outcome
from orchestrator.core.snapshot import RunState
from orchestrator.core.transition import Draft, Transition
from orchestrator.core.vocabulary import ErrorCode, EventType
from orchestrator.definitions import Definition
from orchestrator.errors import InvalidTransitionError
from orchestrator.states import StepStatus

DECISIONS = {"approve": "approved", "reject": "rejected", "request_changes": "changes_requested"}


@dataclass(frozen=True)
class ApprovalDecision:
    """A person's decision on a pending approval (the approval's row as read under the run's lock)."""

    approval_id: str
    step_id: str
    round: int
    status: str
    call: Mapping[str, Any] | None
    decision: str  # a key of DECISIONS
    comment: str | None
    actor: Actor


def check_approval(state: RunState, definition: Definition, decision: ApprovalDecision) -> None:
    """InvalidTransitionError (409) if the approval cannot take this decision: already decided, changes
    asked of a gated tool call, or an approval step past its rounds."""
    if decision.status != "pending":
        raise InvalidTransitionError(f"approval {decision.approval_id} is already {decision.status}",
                                     {"status": decision.status, "allowed_from": ["pending"]})
    if decision.call is not None:
        if decision.decision == "request_changes":
            raise InvalidTransitionError(
                "request_changes applies to approval steps; approve or reject this tool call",
                {"status": decision.status, "allowed_from": ["pending"], "decisions": ["approve", "reject"]},
            )
        return
    max_rounds = definition.step(decision.step_id).max_rounds
    if decision.decision == "request_changes" and decision.round >= max_rounds:
        raise InvalidTransitionError(
            f"approval step {decision.step_id!r} reached its maximum of {max_rounds} rounds; approve or reject",
            {"status": decision.status, "allowed_from": ["pending"], "round": decision.round, "max_rounds": max_rounds},
        )


def on_approval(state: RunState, definition: Definition, decision: ApprovalDecision, env: Env, *,
                checkpoint: Mapping[str, Any] | None = None) -> Transition:
    """Approve (the step succeeds), reject (it fails with approval_rejected, and fail-fast follows) or
    request changes (the approval step and the steps it needs run again, then it asks again). For a
    tool call a policy gated (``decision.call``), the step goes on from ``checkpoint`` with the
    decision in it, except a rejected `tool` step, which fails."""
    draft = Draft(state)
    draft.run_values["has_work"] = True
    step = state.step(decision.step_id)
    status, who = DECISIONS[decision.decision], decision.actor.name
    extra = {"call": dict(decision.call)} if decision.call is not None else {"round": decision.round}
    draft.event(EventType.APPROVAL_DECIDED, step.step_id, step.attempt, approval_id=decision.approval_id,
                decision=status, comment=decision.comment, **extra, **decision.actor.audit())
    if decision.call is not None:
        if decision.decision == "reject" and step.type == "tool":
            error = ErrorInfo(ErrorCode.APPROVAL_REJECTED.value,
                              decision.comment or "the approver refused the tool call", False)
            outcome.settle_any(draft, definition, step, Outcome(error=error), env)
        else:
            verdict = {"approved": decision.decision == "approve", "comment": decision.comment, "decided_by": who}
            _go_on(draft, definition, step.step_id, {**(checkpoint or {}), "approval": verdict})
        return draft.finish()
    if decision.decision == "request_changes":
        again = controls.reopen(draft, definition, [step.step_id, *definition.step(step.step_id).needs])
        draft.event(EventType.STEPS_REOPENED, step.step_id, None, steps=again, reason="changes_requested")
    elif decision.decision == "approve":
        output = {"approved": True, "comment": decision.comment, "decided_by": who, "round": decision.round}
        outcome.settle(draft, definition, step, Outcome(output=output), env)
    else:
        error = ErrorInfo(ErrorCode.APPROVAL_REJECTED.value, decision.comment or "the approval was rejected", False)
        outcome.settle(draft, definition, step, Outcome(error=error), env)
    return draft.finish()


def on_answer(state: RunState, definition: Definition, *, step_id: str, question_id: str, answer: Any,
              actor: Actor, env: Env, checkpoint: Mapping[str, Any] | None = None) -> Transition:
    """An answer to an open question: a `question` step succeeds with it; an agent goes on, in a new
    attempt from its checkpoint, with the answer as the tool's result."""
    draft = Draft(state)
    draft.run_values["has_work"] = True
    step = state.step(step_id)
    draft.event(EventType.QUESTION_ANSWERED, step_id, step.attempt, question_id=question_id, **actor.audit())
    if step.type == "agent":
        _go_on(draft, definition, step_id, {**(checkpoint or {}), "answer": answer})
    else:
        outcome.settle(draft, definition, step, Outcome(output={"answer": answer}), env)
    return draft.finish()


def _go_on(draft: Draft, definition: Definition, step_id: str, checkpoint: dict[str, Any]) -> None:
    """A suspended worker step goes back to `pending` to be dispatched again, from ``checkpoint``; a
    for-each item is queued at once (its step dispatches only items never started, in index order)."""
    draft.move(draft.step(step_id), StepStatus.PENDING, only_from=[StepStatus.WAITING], checkpoint=checkpoint,
               waiting_on=None)
    if items.parent_of(step_id) is not None:
        outcome.queue_step(draft, definition, draft.step(step_id))


@dataclass(frozen=True)
class EventArrival:
    """An inbound event, and the correlation keys of the run's waiting steps (by step id)."""

    event_id: str
    key: str
    name: str | None
    payload: Any
    waiting_keys: Mapping[str, str | None]
    actor: Actor


def on_event(state: RunState, definition: Definition, arrival: EventArrival, env: Env) -> tuple[Transition, list[str]]:
    """Complete every step of the run waiting on the event's key (and name, if the step asks for
    one); the transition and the steps it completes."""
    draft = Draft(state)
    draft.run_values["has_work"] = True
    delivered = []
    for step in state.steps.values():
        wanted = getattr(definition.step(step.step_id), "event_name", None)
        current = draft.step(step.step_id)
        if (current.status is not StepStatus.WAITING or arrival.waiting_keys.get(step.step_id) != arrival.key
                or (wanted and wanted != arrival.name)):
            continue
        output = {"event_id": arrival.event_id, "name": arrival.name, "payload": arrival.payload}
        outcome.settle(draft, definition, current, Outcome(output=output), env)
        delivered.append(step.step_id)
    draft.event(EventType.EVENT_RECEIVED, None, None, event_id=arrival.event_id, correlation_key=arrival.key,
                name=arrival.name, **arrival.actor.audit())
    return draft.finish(), delivered
