"""Rows -> the contract's JSON shapes."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from api.files import output_files
from orchestrator import service, streams
from orchestrator.db import repository as repo
from orchestrator.db.models import (
    ApiToken,
    Approval,
    Event,
    Question,
    Run,
    Step,
    WebhookSecret,
    Workflow,
    WorkflowVersion,
)
from orchestrator.states import StepStatus


def ts(value: datetime | None) -> str | None:
    return streams.ts(value)


def step_json(step: Step) -> dict[str, Any]:
    return {
        "id": step.step_id,
        "type": step.type,
        "status": step.status,
        "attempt": step.attempt,
        "max_attempts": step.max_attempts,
        "queue": step.queue,
        "queued_at": ts(step.queued_at),
        "started_at": ts(step.started_at),
        "completed_at": ts(step.completed_at),
        "output": step.output,
        "error": step.error,
        "skipped_reason": step.skipped_reason,
        "worker": step.worker,
        "usage": step.usage,
        "waiting_on": step.waiting_on,
        **({"items": items_json(step.item_counts)} if step.item_counts is not None else {}),
        "policy": step.policy or [],
        # A reused step that later ran (request_changes reopened it, a retry) has attempts of its own.
        "reused": bool(step.reused) and step.attempt == 0,
    }


def items_json(counts: dict[str, int]) -> dict[str, int]:
    """A for-each step's items by status (``running``: queued, running or retrying)."""
    return {"total": counts["total"], "succeeded": counts["succeeded"], "failed": counts["failed"],
            "running": counts["in_flight"], "pending": counts["pending"], "cancelled": counts["cancelled"]}


def item_json(row: Any) -> dict[str, Any]:
    """One item of a for-each step (GET /runs/{id}/steps/{step_id}/items)."""
    return {"index": row.item_index, "status": row.status, "attempt": row.attempt, "output": row.output,
            "error": row.error, "queued_at": ts(row.queued_at), "started_at": ts(row.started_at),
            "completed_at": ts(row.completed_at)}


def current_step(steps: list[Step]) -> str | None:
    """The first step doing something now (running, then waiting, then queued or retrying); a for-each
    step's items are not steps of their own."""
    for wanted in (StepStatus.RUNNING, StepStatus.WAITING, StepStatus.QUEUED, StepStatus.RETRYING):
        for step in steps:
            if step.status == wanted and step.item_of is None:
                return step.step_id
    return None


def approval_json(approval: Approval) -> dict[str, Any]:
    return {
        "id": approval.id,
        "run_id": approval.run_id,
        "step_id": approval.step_id,
        "round": approval.round,
        "status": approval.status,
        "prompt": approval.prompt,
        "comment": approval.comment,
        "decided_by": approval.decided_by,
        "call": approval.call,
        "created_at": ts(approval.created_at),
        "decided_at": ts(approval.decided_at),
    }


# One status vocabulary for approvals and questions: a question waiting for its answer is `pending`
# (stored as `open`).
QUESTION_STATUS = {"open": "pending"}


def question_json(question: Question) -> dict[str, Any]:
    return {
        "id": question.id,
        "run_id": question.run_id,
        "step_id": question.step_id,
        "question": question.question,
        "status": QUESTION_STATUS.get(question.status, question.status),
        "answer": question.answer,
        "answered_by": question.answered_by,
        "created_at": ts(question.created_at),
        "answered_at": ts(question.answered_at),
    }


def full_run(session: Session, run: Run) -> dict[str, Any]:
    """A run with its steps, the approval requests waiting for a decision (``approvals``), its open
    questions and output files (URLs signed now), as GET /runs/{id} answers. Lists of runs leave
    ``output_files`` empty: signing URLs is for the one run asked for."""
    workflow = repo.get_workflow(session, run.tenant_id, run.workflow_id)
    pending = repo.pending_approvals(session, [run.id])[run.id]
    steps = list(repo.run_steps(session, run.id))
    body = run_json(run, workflow.name if workflow else None, steps, len(pending), current_step(steps))
    body["approvals"] = [approval_json(a) for a in pending]
    body["questions"] = [question_json(q) for q in repo.run_questions(session, run.id) if q.status == "open"]
    body["output_files"] = output_files(run.id)
    # Only a run with a sub-run step can have children: no read for the others (POST /runs answers this).
    body["children"] = (repo.child_run_ids(session, run.id) if any(s.type == "workflow" for s in steps)
                        else [])
    return body


def new_run(started: service.Started) -> dict[str, Any]:
    """A run its start just created, as full_run would read it back (no approvals, questions, files
    or children yet), built from what the start wrote: POST /runs reads nothing back."""
    body = run_json(started.run, started.workflow_name, started.steps, 0, current_step(started.steps))
    body.update(approvals=[], questions=[], output_files=[], children=[])
    return body


def run_json(run: Run, workflow_name: str | None, steps: list[Step] | None = None, pending: int = 0,
             current: str | None = None) -> dict[str, Any]:
    """A run; with ``steps``, its steps too. ``pending``: how many approval requests wait for a
    decision; ``current``: the step holding the run (serializers.current_step)."""
    body = {
        "id": run.id,
        "workflow": {"id": run.workflow_id, "version": run.workflow_version, "name": workflow_name},
        "status": run.status,
        "waiting_on": run.waiting_on,
        "current_step": current,
        "pending_approvals": pending,
        "input": run.input,
        "output": run.output,
        "error": run.error,
        "trigger_type": run.trigger_type,
        "triggered_by": run.triggered_by,
        "retry_of": run.retry_of,
        "forked_from": ({"run_id": run.forked_from_run_id, "step_id": run.forked_from_step_id}
                        if run.forked_from_run_id else None),
        "parent_run_id": run.parent_run_id,
        "parent_step_id": run.parent_step_id,
        "attempt": run.attempt,
        "priority": run.priority,
        "risk_level": run.risk_level,
        "limits": run.limits,
        "created_at": ts(run.created_at),
        "started_at": ts(run.started_at),
        "completed_at": ts(run.completed_at),
        "usage": run.usage,
        "output_files": [],
    }
    if steps is not None:
        body["steps"] = [step_json(s) for s in steps]
        # The steps that failed for good; in a succeeded run, those that could (`on_failure: continue`).
        body["failed_steps"] = [s.step_id for s in steps if s.status == "failed"]
    return body


def event_json(event: Event) -> dict[str, Any]:
    return streams.event_json(event.seq, event.type, step_id=event.step_id, attempt=event.attempt, data=event.data,
                              created_at=event.created_at)


def workflow_json(workflow: Workflow, versions: list[WorkflowVersion] | None = None) -> dict[str, Any]:
    body = {
        "id": workflow.id,
        "name": workflow.name,
        "kind": workflow.kind,
        "version": workflow.latest_version,
        "created_at": ts(workflow.created_at),
        "updated_at": ts(workflow.updated_at),
        "archived_at": ts(workflow.archived_at),
    }
    if versions is not None:
        body["versions"] = [{"version": v.version, "created_at": ts(v.created_at)} for v in versions]
        latest = next((v for v in versions if v.version == workflow.latest_version), None)
        body["definition"] = latest.definition if latest else None
    return body


def version_json(version: WorkflowVersion) -> dict[str, Any]:
    return {
        "id": version.workflow_id,
        "version": version.version,
        "name": version.definition.get("name"),
        "definition": version.definition,
        "created_at": ts(version.created_at),
    }


def token_json(token: ApiToken) -> dict[str, Any]:
    """A token's record; never its secret (only a hash is stored) nor the hash."""
    return {
        "id": token.id,
        "role": token.role,
        "name": token.name,
        "created_at": ts(token.created_at),
        "revoked_at": ts(token.revoked_at),
    }


def webhook_secret_json(row: WebhookSecret) -> dict[str, Any]:
    """A webhook secret's record: id and validity, never the secret (it is not stored)."""
    return {"id": row.id, "workflow_id": row.workflow_id, "created_at": ts(row.created_at),
            "expires_at": ts(row.expires_at)}
