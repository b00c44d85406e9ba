"""External events: POST /events delivers to wait_event steps waiting on the correlation key."""

from __future__ import annotations

from flask import Blueprint

from api.auth import principal, requires
from api.context import json_object, services
from api.controls import actor
from orchestrator import human
from orchestrator.db.session import transaction
from orchestrator.errors import InvalidRequest

bp = Blueprint("events", __name__)


@bp.post("/events")
@requires("operator")
def post_event():
    body = json_object({"correlation_key", "name", "payload"}, required={"correlation_key"})
    name = body.get("name")
    if name is not None and (not isinstance(name, str) or len(name) > 200):
        raise InvalidRequest("'name' must be a string of at most 200 characters")
    svc = services()
    with transaction(svc.sessions) as session:
        event_id, delivered = human.deliver_event(
            session, svc.settings, svc.catalog, principal().tenant_id, body["correlation_key"], name,
            body.get("payload"), actor(),
        )
    if delivered:
        svc.doorbell.ring("event")
    return {"id": event_id, "delivered_to": delivered}, 202
