"""Who is calling (tenant and role), and the one table of what each endpoint requires.

``ROUTE_ROLES`` maps every endpoint of the app to the least role it needs. ``create_app`` refuses to
build an app with an endpoint the table does not name, and a request to an endpoint missing from the
table is refused (fail closed), so a new route cannot go out unguarded by accident.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from flask import Flask, g, request

from api.context import services
from orchestrator.db import repository as repo
from orchestrator.db.repository.tenants import FoundToken, hash_token
from orchestrator.errors import Forbidden, Unauthorized

ROLES = ("viewer", "operator", "admin")
# Not a role: no bearer token is read. PUBLIC answers anyone; SIGNED checks its own signature (webhooks);
# SESSION is the web UI's: its blueprint checks the signed session cookie and the CSRF token of every
# POST (api/ui/views.py), and acts through this API with the session's token, so each action is
# checked against this table again.
PUBLIC, SIGNED, SESSION = "public", "signed", "session"

ROUTE_ROLES: dict[str, str] = {
    "system.healthz": PUBLIC,
    "system.readyz": PUBLIC,
    "openapi.spec": PUBLIC,
    "workflows.list_workflows": "viewer",
    "workflows.get_workflow": "viewer",
    "workflows.get_version": "viewer",
    "workflows.publish": "admin",
    "workflows.archive": "admin",
    "schedules.put_schedule": "admin",
    "schedules.workflow_schedules": "viewer",
    "schedules.all_schedules": "viewer",
    "schedules.delete_schedule": "admin",
    "ui.schedule_save": SESSION,
    "ui.schedule_action": SESSION,
    "runs.list_runs": "viewer",
    "runs.get_run": "viewer",
    "runs.run_events": "viewer",
    "runs.step_items": "viewer",
    "runs.run_context": "viewer",
    "runs.start_run": "operator",
    "controls.act": "operator",
    "forks.fork": "operator",
    "forks.bulk_action": "operator",
    "forks.compare_runs": "viewer",
    "approvals.inbox": "viewer",
    "approvals.open_questions": "viewer",
    "approvals.decide": "operator",
    "approvals.answer": "operator",
    "events.post_event": "operator",
    "tokens.list_tokens": "admin",
    "tokens.create_token": "admin",
    "tokens.revoke_token": "admin",
    "webhooks.list_secrets": "admin",
    "webhooks.create_secret": "admin",
    "webhooks.receive": SIGNED,
    "files.download": SIGNED,
    "runs.run_diagnosis": "viewer",
    "policies.get_policy": "viewer",
    "policies.put_policy": "admin",
    "evidence.run_evidence": "viewer",
    "live.run_stream": "viewer",
    "live.tenant_stream": "viewer",
    "analytics.summary": "viewer",
    "analytics.timeseries": "viewer",
    "monitoring.queues": "viewer",
    "monitoring.workers": "viewer",
    # A viewer sees its tenant's series; with SWITCHYARD_METRICS_PUBLIC=1 anyone sees every tenant's.
    "monitoring.metrics": "viewer",
    # The web UI (outside /api/v1).
    "ui.static": PUBLIC,
    **{f"ui.{name}": SESSION for name in (
        "sign_in", "sign_out", "command", "command_panels", "decide", "answer", "runs", "run", "run_body",
        "control", "run_evidence", "run_stream", "tenant_stream", "workflows", "workflow", "start", "queues",
        "analytics", "editor", "editor_check", "editor_publish", "new_workflow", "versions_diff",
        "compare", "compare_with", "bulk", "step_items")},
}
# Endpoints open to anyone when a setting says so.
PUBLIC_WHEN = {"monitoring.metrics": "metrics_public"}


@dataclass(frozen=True)
class Principal:
    token_id: str
    tenant_id: str
    role: str

    def has(self, role: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)


def unguarded_endpoints(app: Flask) -> list[str]:
    """Endpoints of ``app`` that ROUTE_ROLES does not name (should be none)."""
    return sorted({rule.endpoint for rule in app.url_map.iter_rules()} - set(ROUTE_ROLES))


def register(app: Flask) -> None:
    """Check every request against ROUTE_ROLES: 401 without a live token, 403 with too low a role.

    Raises RuntimeError at start-up if an endpoint of ``app`` is missing from the table.
    """
    missing = unguarded_endpoints(app)
    if missing:
        raise RuntimeError(f"endpoints without an entry in api.auth.ROUTE_ROLES: {missing}")

    @app.before_request
    def _authorize():
        if request.endpoint is None:
            return  # no such route: the 404/405 handler answers
        needed = ROUTE_ROLES.get(request.endpoint)
        if needed in (PUBLIC, SIGNED, SESSION) or is_public(request.endpoint):
            return
        who = _authenticate()
        g.principal = who
        if needed is None:
            raise Forbidden(f"endpoint {request.endpoint!r} has no access rule; it is refused to every role")
        if not who.has(needed):
            raise Forbidden(f"this action needs the {needed!r} role; your token is {who.role!r}")


# The web UI calls this API in-process for the user of a session it checked (api/ui/views.py), and
# hands over that Principal under this WSGI environ key. No client can set it: an HTTP server puts
# only CGI variables and HTTP_* header keys in the environ.
IN_PROCESS = "switchyard.principal"


def _authenticate() -> Principal:
    passed = request.environ.get(IN_PROCESS)
    if isinstance(passed, Principal):
        return passed
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("send 'Authorization: Bearer <token>'; create one with `switchyard token create`")
    svc = services()
    token = token.strip()
    found = svc.tokens.get(token) if svc.tokens is not None else None
    if found is None:
        with svc.reading() as session:
            found = repo.find_token(session, token)
        if found is None:
            raise Unauthorized("unknown or revoked token; create one with `switchyard token create`")
        if svc.tokens is not None:
            svc.tokens.put(token, found)
    return Principal(found.id, found.tenant_id, found.role)


class TokenCache:
    """The live tokens an API process looked up, reused for ``ttl_s`` (SWITCHYARD_TOKEN_CACHE_S): a
    request then costs no lookup, and a revoked token keeps working until its entry expires. Unknown
    tokens are never kept. Keyed by the token's hash, as the database keeps it."""

    def __init__(self, ttl_s: float, size: int = 10_000):
        self.ttl_s, self.size = ttl_s, size
        self._found: dict[str, tuple[float, FoundToken]] = {}

    def get(self, token: str) -> FoundToken | None:
        entry = self._found.get(hash_token(token))
        return entry[1] if entry is not None and entry[0] > time.monotonic() else None

    def put(self, token: str, found: FoundToken) -> None:
        if len(self._found) >= self.size:  # many tokens in turn: start again rather than grow
            self._found.clear()
        self._found[hash_token(token)] = (time.monotonic() + self.ttl_s, found)

    def forget(self, token_id: str) -> None:
        """Drop the token ``token_id`` (revoked through this process)."""
        for key, (_, found) in list(self._found.items()):
            if found.id == token_id:
                self._found.pop(key, None)


def is_public(endpoint: str | None) -> bool:
    """Whether ``endpoint`` is open to anyone under the current settings."""
    setting = PUBLIC_WHEN.get(endpoint or "")
    return setting is not None and bool(getattr(services().settings, setting))


def principal() -> Principal:
    """The caller of this request (set by the check above for every endpoint that needs a token)."""
    return g.principal
