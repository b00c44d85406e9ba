"""The Flask API: ``create_app(settings)`` builds it; nothing happens at import time."""

from __future__ import annotations

from dataclasses import dataclass

from flask import Flask
from sqlalchemy.orm import Session, sessionmaker

from orchestrator import broker
from orchestrator.db.session import make_engine, make_sessionmaker
from orchestrator.settings import Settings, load


@dataclass
class Services:
    """What the views need, built once per app and reachable as ``current_app.extensions['switchyard']``."""

    settings: Settings
    sessions: sessionmaker[Session]
    doorbell: broker.Doorbell


def create_app(settings: Settings | None = None) -> Flask:
    from api import auth, errors, runs, system, workflows

    settings = settings or load()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False
    celery = broker.make_celery(settings)
    app.extensions["switchyard"] = Services(
        settings=settings,
        sessions=make_sessionmaker(make_engine(settings)),
        doorbell=broker.Doorbell(celery, settings.wake_queue),
    )
    errors.register(app)
    auth.register(app)
    for blueprint in (system.bp, workflows.bp, runs.bp):
        app.register_blueprint(blueprint, url_prefix="/api/v1")
    return app
