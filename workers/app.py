"""The Celery app of the workers.

``make_worker_app(settings)`` is the factory; the module-level ``app`` exists because Celery's own
command line (``celery --app workers.app worker|flower``) looks an app up by module path.
"""

from __future__ import annotations

from celery import Celery, signals

from orchestrator import broker, logs
from orchestrator.settings import Settings, load


def make_worker_app(settings: Settings) -> Celery:
    from workers import tasks

    app = broker.make_celery(settings)
    tasks.register(app, settings)

    @signals.setup_logging.connect(weak=False)
    def _logging(loglevel=None, **_kwargs):
        # Connected, this replaces Celery's own logging set-up: every line in the settings' format.
        logs.configure(settings.log_format, loglevel or "INFO")

    return app


app = make_worker_app(load())
