"""The Flask API: ``create_app(settings)`` builds it; nothing happens at import time."""

from __future__ import annotations

from dataclasses import dataclass

from celery import Celery
from flask import Flask
from sqlalchemy.orm import Session, sessionmaker

from orchestrator import broker
from orchestrator.catalog import DefinitionCatalog
from orchestrator.db.session import make_engine, make_sessionmaker
from orchestrator.settings import Settings, load


@dataclass
class Services:
    """What the views need, built once per app and reachable as ``current_app.extensions['switchyard']``."""

    settings: Settings
    sessions: sessionmaker[Session]
    doorbell: broker.Doorbell
    celery: Celery
    catalog: DefinitionCatalog

    def after_commit(self, effects) -> None:
        """Signal what a committed control asks for: wake the scheduler, revoke stopped tasks."""
        if effects.ring:
            self.doorbell.ring(effects.run_id)
        broker.revoke(self.celery, effects.revoke)


def create_app(settings: Settings | None = None) -> Flask:
    from api import (
        approvals,
        auth,
        controls,
        errors,
        events,
        files,
        limits,
        openapi,
        runs,
        system,
        tokens,
        webhooks,
        workflows,
    )

    settings = settings or load()
    # No static route: every route of this app is in api.auth.ROUTE_ROLES.
    app = Flask(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False
    celery = broker.make_celery(settings)
    app.extensions["switchyard"] = Services(
        settings=settings,
        sessions=make_sessionmaker(make_engine(settings)),
        doorbell=broker.Doorbell(celery, settings.wake_queue),
        celery=celery,
        catalog=DefinitionCatalog(),
    )
    errors.register(app)
    for blueprint in (system.bp, workflows.bp, runs.bp, controls.bp, approvals.bp, events.bp, tokens.bp,
                      webhooks.bp, files.bp, openapi.bp):
        app.register_blueprint(blueprint, url_prefix="/api/v1")
    auth.register(app)  # after the blueprints: it checks that every endpoint has an access rule
    limits.register(app, settings)  # after auth: the rate limit counts per tenant
    return app
