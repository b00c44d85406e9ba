"""The Celery app of the workers.

``make_worker_app(settings)`` is the factory; the module-level ``app`` exists because Celery's own
command line (``celery --app workers.app worker|flower``) looks an app up by module path.
"""

from __future__ import annotations

from celery import Celery

from orchestrator import broker
from orchestrator.settings import Settings, load


def make_worker_app(settings: Settings) -> Celery:
    from workers import tasks

    app = broker.make_celery(settings)
    tasks.register(app, settings)
    return app


app = make_worker_app(load())
