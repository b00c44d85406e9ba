"""External events: POST /events delivers to wait_event steps waiting on the correlation key."""

from __future__ import annotations

from flask import Blueprint

from api import schemas
from api.auth import principal
from api.context import parse_body, services
from api.controls import actor
from orchestrator import human
from orchestrator.db.session import transaction

bp = Blueprint("events", __name__)


@bp.post("/events")
def post_event():
    body = parse_body(schemas.InboundEvent)
    svc = services()
    with transaction(svc.sessions) as session:
        event_id, delivered = human.deliver_event(session, svc.catalog, human.EventRequest(
            principal().tenant_id, body.correlation_key, body.name, body.payload, actor()),
            keep_s=svc.settings.event_keep_s)
    if delivered:
        svc.doorbell.ring("event")
    return {"id": event_id, "delivered_to": delivered}, 202
