"""External events: POST /events starts the runs its name triggers and delivers it to wait_event steps
waiting on its correlation key; an ``id`` seen before does neither again."""

from __future__ import annotations

from flask import Blueprint

from api import schemas
from api.auth import principal
from api.context import parse_body, services
from api.controls import actor
from orchestrator import event_starts, human, ids, triggers
from orchestrator.db import repository as repo
from orchestrator.db.session import transaction
from orchestrator.errors import InvalidRequest

bp = Blueprint("events", __name__)


@bp.post("/events")
def post_event():
    body = parse_body(schemas.InboundEvent)
    if body.name is None and body.correlation_key is None:
        raise InvalidRequest("an event needs a 'name' (to start the workflows it triggers) or a 'correlation_key' "
                             "(to reach wait_event steps), or both", {"field": "name"})
    svc, tenant_id = services(), principal().tenant_id
    with transaction(svc.sessions) as session:
        if body.id is not None and not repo.record_event_id(session, tenant_id, body.id):
            return {"id": body.id, "duplicate": True, "started_runs": [], "delivered_to": [], "trigger_errors": []}, 202
        event_id, delivered = body.id, []
        if body.correlation_key is not None:
            kept_id, delivered = human.deliver_event(session, svc.catalog, human.EventRequest(
                tenant_id, body.correlation_key, body.name, body.payload, actor()), keep_s=svc.settings.event_keep_s)
            event_id = event_id or kept_id
        event_id = event_id or ids.new_id("evt")
        started = event_starts.EventStarts()
        if body.name is not None:
            started = event_starts.start_runs(session, svc.settings, svc.catalog, tenant_id, triggers.Event(
                event_id, body.name, body.payload, body.correlation_key))
    if delivered or started.started_runs:
        svc.doorbell.ring("event")
    return {"id": event_id, "duplicate": False, "started_runs": started.started_runs, "delivered_to": delivered,
            "trigger_errors": started.errors}, 202
