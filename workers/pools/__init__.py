"""Celery's thread and solo pools, which cannot stop a task from outside, made to say so quietly.

A cancelled step is revoked with ``terminate=True`` (orchestrator.broker.revoke): the prefork pool
kills the child running it. A thread cannot be killed, and Celery's thread and solo pools answer
``terminate_job`` with NotImplementedError, which the worker logs as a traceback on every cancel.
These subclasses keep their parents' names (``…thread:TaskPool``, ``…solo:TaskPool``) and leave the
step to its cooperative cancel flag, which the heartbeat raises within a beat.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

# `switchyard worker --pool NAME` -> the pool class the worker is configured with.
POOLS = {"threads": "workers.pools.thread:TaskPool", "solo": "workers.pools.solo:TaskPool"}


def no_terminate(pool: object, pid: object) -> None:
    log.debug("%s cannot terminate a task (pid %s); the step stops at its cooperative cancel flag",
              type(pool).__name__, pid)
