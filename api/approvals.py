"""People in the loop: the approvals inbox and decisions, open questions and answers."""

from __future__ import annotations

from flask import Blueprint, request

from api import serializers
from api.auth import principal, requires
from api.context import int_arg, json_object, services
from api.controls import actor
from orchestrator import human
from orchestrator.db import repository as repo
from orchestrator.db.session import transaction
from orchestrator.errors import InvalidRequest

bp = Blueprint("approvals", __name__)

APPROVAL_STATUSES = ("pending", "approved", "rejected", "changes_requested", "cancelled")
QUESTION_STATUSES = ("open", "answered", "cancelled")


def _status_arg(allowed: tuple[str, ...], default: str) -> str | None:
    status = request.args.get("status", default)
    if status == "all":
        return None
    if status not in allowed:
        raise InvalidRequest(f"'status' must be one of {[*allowed, 'all']}")
    return status


@bp.get("/approvals")
@requires("viewer")
def inbox():
    status = _status_arg(APPROVAL_STATUSES, "pending")
    with services().sessions() as session:
        rows = repo.list_approvals(session, principal().tenant_id, status, int_arg("limit", 100, 1, 500))
        return {"approvals": [serializers.approval_json(a) for a in rows]}


@bp.post("/runs/<run_id>/approvals/<approval_id>/<any(approve, reject, request_changes):decision>")
@requires("operator")
def decide(run_id: str, approval_id: str, decision: str):
    body = json_object({"comment"}) if request.get_data(cache=True).strip() else {}
    comment = body.get("comment")
    if comment is not None and (not isinstance(comment, str) or len(comment) > 10000):
        raise InvalidRequest("'comment' must be a string of at most 10000 characters")
    svc = services()
    with transaction(svc.sessions) as session:
        effects = human.decide_approval(
            session, svc.catalog, principal().tenant_id, run_id, approval_id, decision, comment, actor()
        )
    svc.after_commit(effects)
    with svc.sessions() as session:
        return serializers.full_run(session, repo.get_run(session, principal().tenant_id, run_id))


@bp.get("/questions")
@requires("viewer")
def open_questions():
    status = _status_arg(QUESTION_STATUSES, "open")
    with services().sessions() as session:
        rows = repo.list_questions(session, principal().tenant_id, status, int_arg("limit", 100, 1, 500))
        return {"questions": [serializers.question_json(q) for q in rows]}


@bp.post("/runs/<run_id>/questions/<question_id>/answer")
@requires("operator")
def answer(run_id: str, question_id: str):
    body = json_object({"answer"}, required={"answer"})
    svc = services()
    with transaction(svc.sessions) as session:
        effects = human.answer_question(
            session, svc.catalog, principal().tenant_id, run_id, question_id, body["answer"], actor()
        )
    svc.after_commit(effects)
    with svc.sessions() as session:
        return serializers.full_run(session, repo.get_run(session, principal().tenant_id, run_id))
