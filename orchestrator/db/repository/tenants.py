"""Tenants, their API tokens and tool-call policies, and the secrets and replay guard of their webhooks."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from typing import NamedTuple

from sqlalchemy import and_, delete, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from orchestrator import ids
from orchestrator.db.models import ApiToken, Tenant, WebhookDelivery, WebhookSecret
from orchestrator.db.session import first_row_on_driver
from orchestrator.db.types import db_now

# The tables the writes below change, as Core objects (the ORM entities are for reading rows the API
# serialises).
_TENANTS, _API_TOKENS = Tenant.__table__, ApiToken.__table__
_WEBHOOK_SECRETS, _WEBHOOK_DELIVERIES = WebhookSecret.__table__, WebhookDelivery.__table__


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def ensure_tenant(session: Session, tenant_id: str) -> None:
    if session.get(Tenant, tenant_id) is None:
        session.add(Tenant(id=tenant_id, name=tenant_id))
        session.flush()


def tenant_policy(session: Session, tenant_id: str) -> dict | None:
    """The tenant's policy on tool calls, as stored (None: none set)."""
    return session.execute(select(Tenant.policy).where(Tenant.id == tenant_id)).scalar_one_or_none()


def set_tenant_policy(session: Session, tenant_id: str, policy: dict) -> None:
    ensure_tenant(session, tenant_id)
    session.execute(update(_TENANTS).where(_TENANTS.c.id == tenant_id).values(policy=policy))


def create_token(session: Session, tenant_id: str, role: str, name: str = "") -> tuple[str, str]:
    """Store a new token's hash and return (token id, the token itself, shown only now)."""
    ensure_tenant(session, tenant_id)
    token = "sy_" + secrets.token_urlsafe(32)
    token_id = ids.new_id("tok")
    session.add(ApiToken(id=token_id, tenant_id=tenant_id, role=role, name=name, token_hash=hash_token(token)))
    session.flush()
    return token_id, token


class FoundToken(NamedTuple):
    """A live token, as a request's authentication needs it."""

    id: str
    tenant_id: str
    role: str


# Every authenticated request's first statement: sent straight to psycopg, prepared (session.
# first_row_on_driver), it costs a fifth of the client CPU the ORM's select of an ApiToken did.
_FIND_TOKEN_PG = "SELECT id, tenant_id, role FROM api_tokens WHERE token_hash = %(hash)s AND revoked_at IS NULL"


def find_token(session: Session, token: str) -> FoundToken | None:
    """The live (not revoked) token with this value, or None."""
    if session.get_bind().dialect.name == "postgresql":
        row = first_row_on_driver(session, _FIND_TOKEN_PG, {"hash": hash_token(token)})
    else:
        row = session.execute(select(ApiToken.id, ApiToken.tenant_id, ApiToken.role).where(
            ApiToken.token_hash == hash_token(token), ApiToken.revoked_at.is_(None))).first()
    return FoundToken(*row) if row is not None else None


def get_token(session: Session, tenant_id: str, token_id: str) -> ApiToken | None:
    return session.execute(
        select(ApiToken).where(ApiToken.id == token_id, ApiToken.tenant_id == tenant_id)
    ).scalar_one_or_none()


def list_tokens(session: Session, tenant_id: str | None) -> Sequence[ApiToken]:
    """The tokens of a tenant (every tenant's with None), oldest first, revoked ones included."""
    query = select(ApiToken).order_by(ApiToken.created_at, ApiToken.id)
    if tenant_id is not None:
        query = query.where(ApiToken.tenant_id == tenant_id)
    return session.execute(query).scalars().all()


def revoke_token(session: Session, tenant_id: str | None, token_id: str) -> ApiToken | None:
    """Revoke a token (of this tenant, or of any with None); None if there is no such token.

    Revoking twice keeps the first time. The token answers 401 from the commit on: find_token reads
    revoked_at on every request.
    """
    query = select(ApiToken).where(ApiToken.id == token_id).with_for_update()
    if tenant_id is not None:
        query = query.where(ApiToken.tenant_id == tenant_id)
    token = session.execute(query).scalar_one_or_none()
    if token is not None and token.revoked_at is None:
        session.execute(update(_API_TOKENS).where(_API_TOKENS.c.id == token_id).values(revoked_at=db_now()))
        session.refresh(token)
    return token


# --- webhooks -----------------------------------------------------------------------------------


def insert_webhook_secret(session: Session, tenant_id: str, workflow_id: str, salt: str) -> WebhookSecret:
    row = WebhookSecret(id=ids.new_id("whs"), tenant_id=tenant_id, workflow_id=workflow_id, salt=salt)
    session.add(row)
    session.flush()
    session.refresh(row)
    return row


def expire_webhook_secrets(session: Session, tenant_id: str, workflow_id: str, after_s: float) -> None:
    """Secrets of the workflow still valid now stop being valid ``after_s`` seconds from now (or
    sooner, if they were to stop sooner already)."""
    until = db_now(after_s)
    columns = _WEBHOOK_SECRETS.c
    live = and_(columns.tenant_id == tenant_id, columns.workflow_id == workflow_id)
    session.execute(update(_WEBHOOK_SECRETS).where(live, columns.expires_at.is_(None)).values(expires_at=until))
    session.execute(update(_WEBHOOK_SECRETS).where(live, columns.expires_at > until).values(expires_at=until))


def list_webhook_secrets(session: Session, tenant_id: str, workflow_id: str) -> Sequence[WebhookSecret]:
    return session.execute(
        select(WebhookSecret).where(WebhookSecret.tenant_id == tenant_id, WebhookSecret.workflow_id == workflow_id)
        .order_by(WebhookSecret.created_at, WebhookSecret.id)
    ).scalars().all()


def live_webhook_secrets(session: Session, workflow_id: str) -> Sequence[WebhookSecret]:
    """Every tenant's unexpired secrets for a workflow id: the signature decides whose workflow it is."""
    return session.execute(
        select(WebhookSecret).where(
            WebhookSecret.workflow_id == workflow_id,
            or_(WebhookSecret.expires_at.is_(None), WebhookSecret.expires_at > db_now()),
        )
    ).scalars().all()


def record_webhook_delivery(session: Session, signature: str, secret_id: str, keep_s: float) -> bool:
    """Remember an accepted signature for ``keep_s`` seconds; False if it was seen already (a replay).

    Forgets the signatures past their time first, so the table stays the size of a few minutes' traffic.
    """
    session.execute(delete(_WEBHOOK_DELIVERIES).where(_WEBHOOK_DELIVERIES.c.expires_at < db_now()))
    try:
        with session.begin_nested():
            session.execute(insert(_WEBHOOK_DELIVERIES).values(
                signature=signature, secret_id=secret_id, expires_at=db_now(keep_s)))
    except IntegrityError:
        return False
    return True
