"""Celery's thread pool without a traceback per revoke (see workers.pools)."""

from __future__ import annotations

from celery.concurrency import thread

from workers.pools import no_terminate


class TaskPool(thread.TaskPool):
    def terminate_job(self, pid, signal=None):
        no_terminate(self, pid)
