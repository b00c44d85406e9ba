"""Bearer tokens: who is calling (tenant and role), and the role each view requires."""

from __future__ import annotations

from dataclasses import dataclass
from functools import wraps

from flask import Flask, g, request

from api.context import services
from orchestrator.db import repository as repo
from orchestrator.errors import Forbidden, Unauthorized

ROLES = ("viewer", "operator", "admin")
PUBLIC_ENDPOINTS = {"system.healthz", "system.readyz"}
# Endpoints that need no token when a setting says so: GET /metrics with SWITCHYARD_METRICS_PUBLIC=1.
PUBLIC_WHEN = {"monitoring.metrics": "metrics_public"}


@dataclass(frozen=True)
class Principal:
    token_id: str
    tenant_id: str
    role: str

    def has(self, role: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)


def register(app: Flask) -> None:
    @app.before_request
    def _authenticate():
        if request.endpoint in PUBLIC_ENDPOINTS or request.endpoint is None:
            return
        if is_public(request.endpoint):
            return
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("send 'Authorization: Bearer <token>'; create one with `switchyard token create`")
        with services().sessions() as session:
            found = repo.find_token(session, token.strip())
        if found is None:
            raise Unauthorized("unknown or revoked token; create one with `switchyard token create`")
        g.principal = Principal(found.id, found.tenant_id, found.role)


def is_public(endpoint: str | None) -> bool:
    """Whether ``endpoint`` is open to anyone under the current settings."""
    setting = PUBLIC_WHEN.get(endpoint or "")
    return setting is not None and bool(getattr(services().settings, setting))


def principal() -> Principal:
    return g.principal


def requires(role: str):
    """Refuse the view with 403 unless the caller's role is at least ``role``."""

    def decorate(view):
        @wraps(view)
        def wrapper(*args, **kwargs):
            if not principal().has(role):
                raise Forbidden(f"this action needs the {role!r} role; your token is {principal().role!r}")
            return view(*args, **kwargs)

        wrapper.required_role = role
        return wrapper

    return decorate
