"""Health and readiness."""

from __future__ import annotations

from flask import Blueprint
from sqlalchemy import text

from api.context import services
from api.errors import error_response

bp = Blueprint("system", __name__)


@bp.get("/healthz")
def healthz():
    return {"status": "ok"}


@bp.get("/readyz")
def readyz():
    """Ready when the database answers."""
    try:
        with services().sessions() as session:
            session.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        return error_response(503, "unavailable", f"database not reachable: {type(exc).__name__}",
                              headers={"Retry-After": "2"})
    return {"status": "ready"}
