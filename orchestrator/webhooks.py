"""Signed inbound webhooks: ``POST /hooks/{workflow_id}`` starts a run (docs/api.md, "Events and webhooks in").

The sender signs ``"<t>.<raw body>"`` with HMAC-SHA256 and the workflow's secret and sends
``X-Switchyard-Signature: t=<unix seconds>,v1=<hex>``. A request is accepted when a live secret's
signature matches (constant-time compare), ``t`` is within the tolerance of the database clock, and
the signature was not accepted before (deliveries are remembered until they are too old anyway).

Secrets are never stored: each is derived from SWITCHYARD_SECRET_KEY and its row's id and salt, shown
once at creation, and appears in no event, log line or error message.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from typing import Any

from sqlalchemy.orm import Session

from orchestrator import service
from orchestrator.db import repository as repo
from orchestrator.db.models import Run, WebhookSecret
from orchestrator.errors import InvalidRequest, NotFound, Unauthorized
from orchestrator.settings import Settings

HEADER = "X-Switchyard-Signature"


def derive_secret(secret_key: str, secret_id: str, salt: str) -> str:
    """The secret of a stored row: HMAC of its id and salt under the server's key."""
    return "whsec_" + hmac.new(secret_key.encode(), f"{secret_id}:{salt}".encode(), hashlib.sha256).hexdigest()


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The v1 signature of ``body`` sent at ``timestamp`` (what a sender computes)."""
    return hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()


def signature_header(secret: str, timestamp: int, body: bytes) -> str:
    return f"t={timestamp},v1={sign(secret, timestamp, body)}"


def parse_header(header: str | None) -> tuple[int, list[str]]:
    """``t`` and the ``v1`` signatures of the header; Unauthorized if it is missing or malformed."""
    if not header:
        raise Unauthorized(f"send the {HEADER} header: t=<unix seconds>,v1=<hex HMAC-SHA256 of '<t>.<body>'>")
    timestamp, signatures = None, []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        # [0-9] and not str.isdigit(): '¹' is a digit to isdigit() and not a number to int().
        if key == "t" and re.fullmatch(r"[0-9]{1,12}", value):
            timestamp = int(value)
        elif key == "v1" and re.fullmatch(r"[0-9a-f]{64}", value):
            signatures.append(value)
    if timestamp is None or not signatures:
        raise Unauthorized(f"malformed {HEADER} header: expected t=<unix seconds>,v1=<64 hex digits>")
    return timestamp, signatures


def create_secret(
    session: Session, settings: Settings, tenant_id: str, workflow_id: str, overlap_s: float | None
) -> tuple[WebhookSecret, str]:
    """A new secret for the tenant's workflow, returned once with its row; the secrets in use stay
    valid ``overlap_s`` more seconds (default: the setting). NotFound if there is no such workflow."""
    if repo.get_workflow(session, tenant_id, workflow_id) is None:
        raise NotFound(f"workflow {workflow_id!r} not found")
    overlap = settings.webhook_rotation_overlap_s if overlap_s is None else overlap_s
    repo.expire_webhook_secrets(session, tenant_id, workflow_id, overlap)
    row = repo.insert_webhook_secret(session, tenant_id, workflow_id, secrets.token_hex(16))
    return row, derive_secret(settings.secret_key, row.id, row.salt)


def receive(session: Session, settings: Settings, workflow_id: str, header: str | None, body: bytes) -> Run:
    """Verify a delivery and start its run (``trigger_type: webhook``, input = the JSON body).

    Raises Unauthorized for a missing, malformed, wrong, stale or replayed signature (nothing is
    started), InvalidRequest for a body that is not JSON, and what ``service.start_run`` raises.
    """
    timestamp, signatures = parse_header(header)
    now = repo.now(session)
    if abs(now.timestamp() - timestamp) > settings.webhook_tolerance_s:
        raise Unauthorized(f"the signature's timestamp is more than {settings.webhook_tolerance_s} s from now; "
                           "sign each delivery when it is sent")
    matched = _matching_secret(settings, repo.live_webhook_secrets(session, workflow_id), timestamp, body, signatures)
    if matched is None:
        raise Unauthorized(f"no valid signature for workflow {workflow_id!r}")
    secret, signature = matched
    # Kept a minute past the moment `t` leaves the tolerance, so it outlives every chance of a replay.
    keep_s = timestamp + settings.webhook_tolerance_s - now.timestamp() + 60
    if not repo.record_webhook_delivery(session, signature, secret.id, keep_s):
        raise Unauthorized("this signature was used already; sign each delivery anew")
    return service.start_run(session, settings, secret.tenant_id, workflow_id, _json_input(body),
                             trigger_type="webhook", triggered_by=secret.id).run


def _matching_secret(
    settings: Settings, candidates, timestamp: int, body: bytes, signatures: list[str]
) -> tuple[WebhookSecret, str] | None:
    for row in candidates:
        expected = sign(derive_secret(settings.secret_key, row.id, row.salt), timestamp, body)
        for given in signatures:
            if hmac.compare_digest(expected, given):
                return row, given
    return None


def _json_input(body: bytes) -> Any:
    if not body.strip():
        return {}
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise InvalidRequest("the webhook body must be JSON (it becomes the run's input)") from None
