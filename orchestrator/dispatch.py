"""From "these steps are queued" to their Celery messages: publish after the commit, then forget the
outbox rows. The outbox rows are the safety net: if the publish or the delete fails, the scheduler's
sweep publishes them again, and a copy already delivered is dropped by the claim's guard."""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager

from celery import Celery
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from orchestrator import admission, broker
from orchestrator.db import repository as repo
from orchestrator.messages import StepMessage

log = logging.getLogger(__name__)


def publish_queued(celery: Celery, one_statement: Callable[[], AbstractContextManager[Session]],
                   messages: list[StepMessage], *, cancel_grace_s: float, handoff_queue: str | None = None) -> None:
    """Publish the messages of steps a committed transaction queued, then delete their outbox rows
    (in ``one_statement()``: a session in autocommit on PostgreSQL). Only what fits their queues'
    windows is published; the rest is held for the scheduler (orchestrator/admission.py; a lone
    message on ``handoff_queue`` takes the place of the step that queued it). Never raises for a
    broker or database failure: the rows stay for the sweep."""
    if not messages:
        return
    try:
        messages = admission.checked(celery, one_statement, messages, handoff_queue=handoff_queue)
    except DBAPIError as exc:
        log.warning("could not check the window for %d step messages (%s); the sweep will publish them",
                    len(messages), exc)
        return
    if not messages:
        return
    try:
        broker.publish_steps(celery, messages, cancel_grace_s)
    except Exception as exc:  # noqa: BLE001 - the outbox keeps them
        log.warning("publishing %d step messages failed (%s); the scheduler's sweep will publish them",
                    len(messages), exc)
        return
    try:
        with one_statement() as session:
            repo.delete_outbox(session, [m.outbox_id for m in messages])
    except DBAPIError as exc:
        log.warning("could not delete %d published outbox rows (%s); the sweep will publish them again",
                    len(messages), exc)
