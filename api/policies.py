"""The tenant's policy on tool calls: read it (viewer), replace it (admin)."""

from __future__ import annotations

from flask import Blueprint

from api.auth import principal
from api.context import parse_body, services
from orchestrator import policy, registry
from orchestrator.db import repository as repo
from orchestrator.db.session import transaction
from orchestrator.errors import InvalidRequest

bp = Blueprint("policies", __name__)


@bp.get("/policy")
def get_policy():
    """The tenant's policy; with none set, the empty policy (allow, no limits)."""
    with services().sessions() as session:
        stored = repo.tenant_policy(session, principal().tenant_id)
    return {"policy": policy.Policy.model_validate(stored or {}).model_dump(mode="json")}


@bp.put("/policy")
def put_policy():
    """Replace the tenant's policy; it applies to every tool call decided from now on, in every workflow."""
    body = parse_body(policy.Policy)
    known = registry.known_tools() | registry.AGENT_ONLY_TOOLS
    unknown = [f"rules.{i}.tool: unknown tool {r.tool!r}" for i, r in enumerate(body.rules)
               if r.tool is not None and r.tool not in known]
    unknown += [f"rate_limits.{key}: key a limit by provider ('openai') or 'provider/model' ('openai/gpt-4o-mini')"
                for key in body.rate_limits if not _rate_limit_key(key)]
    if unknown:
        raise InvalidRequest("invalid policy: " + "; ".join(unknown), {"problems": unknown})
    stored = body.model_dump(mode="json")
    with transaction(services().sessions) as session:
        repo.set_tenant_policy(session, principal().tenant_id, stored)
    return {"policy": stored}


def _rate_limit_key(key: str) -> bool:
    provider, _, model = key.partition("/")
    return bool(provider.strip()) and provider == provider.strip() and (model.strip() != "" or "/" not in key)
