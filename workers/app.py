"""The Celery app of the workers.

``make_worker_app(settings)`` is the factory; the module-level ``app`` exists because Celery's own
command line (``celery --app workers.app worker|flower``) looks an app up by module path.
"""

from __future__ import annotations

from celery import Celery, signals

from orchestrator import broker, logs, tracing
from orchestrator.settings import Settings, load


def make_worker_app(settings: Settings) -> Celery:
    from workers import tasks

    app = broker.make_celery(settings)
    tasks.register(app, settings)

    @signals.setup_logging.connect(weak=False)
    def _logging(loglevel=None, **_kwargs):
        # Connected, this replaces Celery's own logging set-up: every line in the settings' format.
        logs.configure(settings.log_format, loglevel or "INFO")

    # Traces (off unless OTEL_TRACES_EXPORTER): in each prefork child, after the fork; in the worker
    # itself for the threads and solo pools.
    signals.worker_process_init.connect(lambda **_kw: tracing.configure("switchyard-worker"), weak=False)

    @signals.worker_init.connect(weak=False)
    def _tracing(sender=None, **_kwargs):
        if "prefork" not in str(getattr(sender, "pool_cls", "")):
            tracing.configure("switchyard-worker")

    return app


app = make_worker_app(load())
