"""Monitoring: Prometheus metrics (and, below, queues and workers)."""

from __future__ import annotations

from flask import Blueprint, Response, request

from api.auth import is_public, principal, requires
from api.context import services
from orchestrator import metrics

bp = Blueprint("monitoring", __name__)


@bp.get("/metrics", endpoint="metrics")
def metrics_view():
    """Prometheus text. Public (every tenant) with SWITCHYARD_METRICS_PUBLIC=1; otherwise a viewer
    token sees its own tenant's series."""
    tenant_id = None if is_public(request.endpoint) else _viewer_tenant()
    return Response(metrics.render(services().sessions, tenant_id), content_type=metrics.CONTENT_TYPE)


@requires("viewer")
def _viewer_tenant() -> str:
    return principal().tenant_id
