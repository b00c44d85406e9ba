"""Run controls: POST /runs/{id}/pause|resume|cancel|retry|rerun."""

from __future__ import annotations

from flask import Blueprint, request

from api import schemas, serializers
from api.auth import principal
from api.context import parse_body, services
from orchestrator import controls
from orchestrator.db import repository as repo
from orchestrator.db.session import transaction
from orchestrator.errors import InvalidRequest

bp = Blueprint("controls", __name__)


def actor() -> controls.Actor:
    triggered_by = request.args.get("triggered_by")
    if triggered_by is not None and not 1 <= len(triggered_by) <= 200:
        raise InvalidRequest("'triggered_by' must be 1-200 characters")
    return controls.Actor(principal().token_id, triggered_by)


@bp.post("/runs/<run_id>/<any(pause, resume, cancel, retry, rerun):action>")
def act(run_id: str, action: str):
    svc = services()
    who = actor()
    body = parse_body(schemas.ControlBody, optional=True).model_dump(exclude_unset=True)
    with transaction(svc.sessions) as session:
        effects = controls.control(session, svc.catalog,
                                   controls.ControlRequest(principal().tenant_id, run_id, action, who, body),
                                   settings=svc.settings)
    svc.after_commit(effects)
    with svc.sessions() as session:
        return serializers.full_run(session, repo.get_run(session, principal().tenant_id, effects.run_id)), (
            201 if effects.created else 200
        )
