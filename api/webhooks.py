"""Webhooks in: per-workflow signing secrets (admin) and ``POST /hooks/{workflow_id}`` (signed)."""

from __future__ import annotations

from flask import Blueprint, request

from api import schemas, serializers
from api.auth import principal
from api.context import parse_body, services
from orchestrator import webhooks
from orchestrator.db import repository as repo
from orchestrator.db.session import transaction
from orchestrator.errors import NotFound

bp = Blueprint("webhooks", __name__)


@bp.post("/workflows/<workflow_id>/webhook-secrets")
def create_secret(workflow_id: str):
    """A new secret, shown only in this answer; the secrets in use stay valid for the overlap."""
    body = parse_body(schemas.WebhookSecretCreate, optional=True)
    svc = services()
    with transaction(svc.sessions) as session:
        row, secret = webhooks.create_secret(session, svc.settings, principal().tenant_id, workflow_id, body.overlap_s)
        result = {**serializers.webhook_secret_json(row), "secret": secret}
    return result, 201


@bp.get("/workflows/<workflow_id>/webhook-secrets")
def list_secrets(workflow_id: str):
    with services().sessions() as session:
        if repo.get_workflow(session, principal().tenant_id, workflow_id) is None:
            raise NotFound(f"workflow {workflow_id!r} not found")
        rows = repo.list_webhook_secrets(session, principal().tenant_id, workflow_id)
        return {"webhook_secrets": [serializers.webhook_secret_json(r) for r in rows]}


@bp.post("/hooks/<workflow_id>")
def receive(workflow_id: str):
    """Start a run from a signed delivery; 401 (and nothing started) unless the signature is good."""
    svc = services()
    with transaction(svc.sessions) as session:
        run = webhooks.receive(session, svc.settings, workflow_id, request.headers.get(webhooks.HEADER),
                               request.get_data(cache=True))
        result = serializers.full_run(session, run)
    svc.doorbell.ring(run.id)
    return result, 201
