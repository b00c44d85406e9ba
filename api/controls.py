"""Run controls: POST /runs/{id}/pause|resume|cancel|retry|rerun."""

from __future__ import annotations

from flask import Blueprint, request

from api import serializers
from api.auth import principal, requires
from api.context import json_body, services
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


def optional_object() -> dict:
    """An optional JSON object body: none, empty, or an object."""
    if not request.get_data(cache=True).strip():
        return {}
    body = json_body()
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    return body


@bp.post("/runs/<run_id>/<any(pause, resume, cancel, retry, rerun):action>")
@requires("operator")
def act(run_id: str, action: str):
    svc = services()
    who = actor()
    body = optional_object()
    with transaction(svc.sessions) as session:
        effects = controls.control(session, svc.settings, svc.catalog, principal().tenant_id, run_id, action, who, body)
    svc.after_commit(effects)
    with svc.sessions() as session:
        return serializers.full_run(session, repo.get_run(session, principal().tenant_id, effects.run_id)), (
            201 if effects.created else 200
        )
