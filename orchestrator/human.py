"""People and the outside world move waiting runs on: approvals, answers, inbound events.

Each decision locks the run, records itself, and completes (or fails) the waiting step through the
one outcome writer, so fail-fast and the event log behave exactly as for a worker's report.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from orchestrator import outcomes
from orchestrator.catalog import DefinitionCatalog
from orchestrator.controls import Actor, Effects, check_applicable, lock_owned_run
from orchestrator.db import repository as repo
from orchestrator.db.repository import RunChanges
from orchestrator.errors import InvalidRequest, InvalidTransitionError, NotFound
from orchestrator.outcomes import ErrorInfo, Outcome
from orchestrator.settings import Settings
from orchestrator.states import StepStatus

DECISIONS = {"approve": "approved", "reject": "rejected", "request_changes": "changes_requested"}


def decide_approval(
    session: Session,
    catalog: DefinitionCatalog,
    tenant_id: str,
    run_id: str,
    approval_id: str,
    decision: str,
    comment: str | None,
    actor: Actor,
) -> Effects:
    """Approve (the run goes on), reject (the run fails with approval_rejected) or request changes
    (the approval's upstream steps run again with ``approval.comment`` and it asks again)."""
    if decision not in DECISIONS:
        raise NotFound(f"no approval decision {decision!r}; use one of {list(DECISIONS)}")
    run = lock_owned_run(session, tenant_id, run_id)
    definition = check_applicable(session, catalog, run)
    approval = repo.get_approval(session, run_id, approval_id)
    if approval is None:
        raise NotFound(f"approval {approval_id!r} not found in run {run_id!r}")
    if approval.status != "pending":
        raise InvalidTransitionError(
            f"approval {approval_id} is already {approval.status}",
            {"status": approval.status, "allowed_from": ["pending"]},
        )
    if approval.call is not None:
        return _decide_gated_call(session, run, definition, approval, decision, comment, actor)
    step_def = definition.step(approval.step_id)
    if decision == "request_changes" and approval.round >= step_def.max_rounds:
        raise InvalidTransitionError(
            f"approval step {approval.step_id!r} reached its maximum of {step_def.max_rounds} rounds; approve or reject",
            {"status": approval.status, "allowed_from": ["pending"], "round": approval.round,
             "max_rounds": step_def.max_rounds},
        )
    who = actor.triggered_by or actor.token_id
    repo.decide_approval(session, approval_id, DECISIONS[decision], comment, who)
    views = repo.steps_for_update(session, [run_id])[run_id]
    view = next(v for v in views if v.step_id == approval.step_id)
    changes = RunChanges(run, run_values={"has_work": True})
    changes.event("approval_decided", approval.step_id, view.attempt, approval_id=approval_id,
                  decision=DECISIONS[decision], comment=comment, round=approval.round, **actor.audit())
    effects = Effects(run_id, ring=True)
    if decision == "request_changes":
        again = outcomes.reopen_steps(session, run_id, definition, views, [approval.step_id, *step_def.needs])
        changes.event("steps_reopened", approval.step_id, None, steps=again, reason="changes_requested")
    else:
        outcome = (
            Outcome(output={"approved": True, "comment": comment, "decided_by": who, "round": approval.round})
            if decision == "approve"
            else Outcome(error=ErrorInfo("approval_rejected", comment or "the approval was rejected", False))
        )
        effects.revoke = outcomes.apply_outcome(session, changes, definition, views, view, outcome) or []
    repo.apply_run_changes(session, changes)
    return effects


def _decide_gated_call(session, run, definition, approval, decision: str, comment, actor: Actor) -> Effects:
    """A person decides a tool call a policy sent for approval. Approved, the step is dispatched again and
    makes the call; rejected, an agent is told and goes on, while a `tool` step fails with approval_rejected."""
    if decision == "request_changes":
        raise InvalidTransitionError(
            "request_changes applies to approval steps; approve or reject this tool call",
            {"status": approval.status, "allowed_from": ["pending"], "decisions": ["approve", "reject"]},
        )
    who = actor.triggered_by or actor.token_id
    repo.decide_approval(session, approval.id, DECISIONS[decision], comment, who)
    views = repo.steps_for_update(session, [run.id])[run.id]
    view = next(v for v in views if v.step_id == approval.step_id)
    changes = RunChanges(run, run_values={"has_work": True})
    changes.event("approval_decided", view.step_id, view.attempt, approval_id=approval.id,
                  decision=DECISIONS[decision], comment=comment, call=approval.call, **actor.audit())
    effects = Effects(run.id, ring=True)
    if decision == "reject" and view.type == "tool":
        error = ErrorInfo("approval_rejected", comment or "the approver refused the tool call", False)
        effects.revoke = outcomes.apply_outcome(session, changes, definition, views, view, Outcome(error=error)) or []
    else:
        checkpoint = dict(repo.step_checkpoint(session, run.id, view.step_id) or {})
        checkpoint["approval"] = {"approved": decision == "approve", "comment": comment, "decided_by": who}
        repo.set_checkpoint(session, run.id, view.step_id, checkpoint)
        repo.update_steps(session, run.id, [view.step_id], StepStatus.PENDING, only_from=[StepStatus.WAITING],
                          waiting_on=None)
    repo.apply_run_changes(session, changes)
    return effects


def answer_question(
    session: Session,
    catalog: DefinitionCatalog,
    tenant_id: str,
    run_id: str,
    question_id: str,
    answer: Any,
    actor: Actor,
) -> Effects:
    """Answer an open question: a `question` step succeeds with it; an agent goes on with it."""
    run = lock_owned_run(session, tenant_id, run_id)
    definition = check_applicable(session, catalog, run)
    question = repo.get_question(session, run_id, question_id)
    if question is None:
        raise NotFound(f"question {question_id!r} not found in run {run_id!r}")
    if not repo.answer_question(session, question_id, answer, actor.triggered_by or actor.token_id):
        raise InvalidTransitionError(f"question {question_id} is already {question.status}",
                                     {"status": question.status, "allowed_from": ["open"]})
    views = repo.steps_for_update(session, [run_id])[run_id]
    view = next(v for v in views if v.step_id == question.step_id)
    changes = RunChanges(run, run_values={"has_work": True})
    changes.event("question_answered", view.step_id, view.attempt, question_id=question_id, **actor.audit())
    if view.type == "agent":
        # The agent goes on in a new attempt, from its checkpoint, with the answer as the tool's result.
        checkpoint = dict(repo.step_checkpoint(session, run_id, view.step_id) or {})
        checkpoint["answer"] = answer
        repo.set_checkpoint(session, run_id, view.step_id, checkpoint)
        repo.update_steps(session, run_id, [view.step_id], StepStatus.PENDING, only_from=[StepStatus.WAITING],
                          waiting_on=None)
    else:
        outcomes.apply_outcome(session, changes, definition, views, view, Outcome(output={"answer": answer}))
    repo.apply_run_changes(session, changes)
    return Effects(run_id, ring=True)


def deliver_event(
    session: Session,
    settings: Settings,
    catalog: DefinitionCatalog,
    tenant_id: str,
    key: str,
    name: str | None,
    payload: Any,
    actor: Actor,
) -> tuple[str, list[dict[str, str]]]:
    """Keep the event for the configured window and complete every step waiting on its key now.

    Returns the event id and the (run, step) pairs it was delivered to.
    """
    if not isinstance(key, str) or not 1 <= len(key) <= 200:
        raise InvalidRequest("'correlation_key' must be a string of 1-200 characters")
    event_id = repo.insert_inbound_event(session, tenant_id, key, name, payload, settings.event_keep_s)
    delivered = []
    for run_id in repo.runs_waiting_on_key(session, tenant_id, key):
        run = repo.lock_run(session, run_id)
        definition = catalog.get(session, (run.tenant_id, run.workflow_id, run.workflow_version))
        views = repo.steps_for_update(session, [run_id])[run_id]
        changes = RunChanges(run, run_values={"has_work": True})
        for view in views:
            step = repo.step_fields(session, run_id, view.step_id)
            wanted = definition.step(view.step_id)
            if (view.status is not StepStatus.WAITING or step.correlation_key != key
                    or (wanted.event_name and wanted.event_name != name)):
                continue
            outcome = Outcome(output={"event_id": event_id, "name": name, "payload": payload})
            outcomes.apply_outcome(session, changes, definition, views, view, outcome)
            delivered.append({"run_id": run_id, "step_id": view.step_id})
        changes.event("event_received", None, None, event_id=event_id, correlation_key=key, name=name,
                      **actor.audit())
        repo.apply_run_changes(session, changes)
    return event_id, delivered


