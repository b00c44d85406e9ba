"""Celery's solo pool without a traceback per revoke (see workers.pools)."""

from __future__ import annotations

from celery.concurrency import solo

from workers.pools import no_terminate


class TaskPool(solo.TaskPool):
    def terminate_job(self, pid, signal=None):
        no_terminate(self, pid)
