"""People in the loop: the approvals inbox and decisions, open questions and answers."""

from __future__ import annotations

from flask import Blueprint, request

from api import schemas, serializers
from api.auth import principal
from api.context import int_arg, parse_body, services
from api.controls import actor
from orchestrator import human
from orchestrator.db import repository as repo
from orchestrator.db.session import transaction
from orchestrator.errors import InvalidRequest

bp = Blueprint("approvals", __name__)

# One status vocabulary for GET /approvals and GET /questions: pending (the default), decided or
# answered, cancelled, all; an approval's own decisions narrow `decided`. Each maps to stored statuses
# (a question waiting for its answer is stored `open`).
APPROVAL_STATUSES = {"pending": ("pending",), "decided": ("approved", "rejected", "changes_requested"),
                     "approved": ("approved",), "rejected": ("rejected",),
                     "changes_requested": ("changes_requested",), "cancelled": ("cancelled",), "all": None}
QUESTION_STATUSES = {"pending": ("open",), "answered": ("answered",), "cancelled": ("cancelled",), "all": None}


def _status_arg(allowed: dict[str, tuple[str, ...] | None]) -> tuple[str, ...] | None:
    status = request.args.get("status", "pending")
    if status not in allowed:
        raise InvalidRequest(f"'status' must be one of {list(allowed)}", {"field": "status"})
    return allowed[status]


@bp.get("/approvals")
def inbox():
    status = _status_arg(APPROVAL_STATUSES)
    with services().sessions() as session:
        rows = repo.list_approvals(session, principal().tenant_id, status, int_arg("limit", 100, 1, 500))
        return {"approvals": [serializers.approval_json(a) for a in rows]}


@bp.post("/runs/<run_id>/approvals/<approval_id>/<any(approve, reject, request_changes):decision>")
def decide(run_id: str, approval_id: str, decision: str):
    comment = parse_body(schemas.Decision, optional=True).comment
    svc = services()
    with transaction(svc.sessions) as session:
        effects = human.decide_approval(session, svc.catalog, human.ApprovalRequest(
            principal().tenant_id, run_id, approval_id, decision, comment, actor()))
    svc.after_commit(effects)
    with svc.sessions() as session:
        return serializers.full_run(session, repo.get_run(session, principal().tenant_id, run_id))


@bp.get("/questions")
def open_questions():
    status = _status_arg(QUESTION_STATUSES)
    with services().sessions() as session:
        rows = repo.list_questions(session, principal().tenant_id, status, int_arg("limit", 100, 1, 500))
        return {"questions": [serializers.question_json(q) for q in rows]}


@bp.post("/runs/<run_id>/questions/<question_id>/answer")
def answer(run_id: str, question_id: str):
    body = parse_body(schemas.Answer)
    svc = services()
    with transaction(svc.sessions) as session:
        effects = human.answer_question(session, svc.catalog, human.AnswerRequest(
            principal().tenant_id, run_id, question_id, body.answer, actor()))
    svc.after_commit(effects)
    with svc.sessions() as session:
        return serializers.full_run(session, repo.get_run(session, principal().tenant_id, run_id))
