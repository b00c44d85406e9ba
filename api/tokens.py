"""API tokens of the caller's tenant (admin): list, create (the secret is shown once), revoke."""

from __future__ import annotations

from flask import Blueprint

from api import schemas, serializers
from api.auth import principal
from api.context import parse_body, services
from orchestrator.db import repository as repo
from orchestrator.db.session import transaction
from orchestrator.errors import NotFound

bp = Blueprint("tokens", __name__)


@bp.get("/tokens")
def list_tokens():
    with services().sessions() as session:
        return {"tokens": [serializers.token_json(t) for t in repo.list_tokens(session, principal().tenant_id)]}


@bp.post("/tokens")
def create_token():
    """A new token of the caller's tenant; the answer's ``token`` is the only time it is shown."""
    body = parse_body(schemas.TokenCreate)
    with transaction(services().sessions) as session:
        token_id, secret = repo.create_token(session, principal().tenant_id, body.role, body.name)
        stored = repo.get_token(session, principal().tenant_id, token_id)
        result = {**serializers.token_json(stored), "token": secret}
    return result, 201


@bp.delete("/tokens/<token_id>")
def revoke_token(token_id: str):
    svc = services()
    with transaction(svc.sessions) as session:
        token = repo.revoke_token(session, principal().tenant_id, token_id)
        if token is None:
            raise NotFound(f"token {token_id!r} not found")
        answer = serializers.token_json(token)
    if svc.tokens is not None:
        svc.tokens.forget(token_id)  # at once in this process; the others' entries expire (SWITCHYARD_TOKEN_CACHE_S)
    return answer
