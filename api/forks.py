"""Forks, bulk actions and comparisons: POST /runs/{id}/fork, POST /runs/bulk/{action},
GET /runs/{id}/compare/{other_id}."""

from __future__ import annotations

import functools

from flask import Blueprint

from api import schemas, serializers
from api.auth import principal
from api.context import parse_body, services
from api.controls import actor
from orchestrator import bulk, compare, controls, dispatch, forks, service
from orchestrator.db import repository as repo
from orchestrator.db.session import transaction
from orchestrator.errors import InvalidRequest

bp = Blueprint("forks", __name__)


def after_start(svc, started: service.Started) -> None:
    """Signal a start that committed, as POST /runs does: publish the first steps it queued (off the
    request path; the sweep publishes from the outbox what does not go out), or wake the scheduler."""
    if started.messages:
        svc.courier.send(functools.partial(dispatch.publish_queued, svc.celery, svc.at_once, started.messages,
                                           cancel_grace_s=svc.settings.cancel_grace_s), "publish")
    elif started.created:
        svc.doorbell.ring(started.run.id)


@bp.post("/runs/<run_id>/fork")
def fork(run_id: str):
    body = parse_body(schemas.ForkBody)
    changes = body.model_dump(exclude_unset=True, exclude={"from_step"})
    svc = services()
    with transaction(svc.sessions) as session:
        started = forks.fork_run(session, svc.settings, forks.ForkRequest(
            principal().tenant_id, run_id, body.from_step, actor(), changes))
        result = serializers.full_run(session, started.run)
    after_start(svc, started)
    return result, 201


class _Signals:
    """After each run's commit in a bulk action: what a single action would signal."""

    def __init__(self, svc):
        self.svc = svc

    def controlled(self, effects: controls.Effects) -> None:
        self.svc.after_commit(effects)

    def started(self, started: service.Started) -> None:
        after_start(self.svc, started)


@bp.post(f"/runs/bulk/<any({', '.join(bulk.ACTIONS)}):action>")
def bulk_action(action: str):
    body = parse_body(schemas.BulkBody)
    where = body.filter.model_dump(exclude_unset=True)
    if not any(value not in (None, []) for value in where.values()):
        raise InvalidRequest("the filter needs at least one of status, workflow_id, error_code, created_after, "
                             "created_before, run_ids (an empty filter would select every run)", {"field": "filter"})
    status = where.get("status")
    statuses = tuple([status] if isinstance(status, str) else status or ())
    svc = services()
    request = bulk.BulkRequest(
        tenant_id=principal().tenant_id, action=action, actor=actor(), dry_run=body.dry_run, limit=body.limit,
        where=repo.RunFilter(statuses=statuses, workflow_id=body.filter.workflow_id,
                             error_code=body.filter.error_code, created_after=body.filter.created_after,
                             created_before=body.filter.created_before, run_ids=tuple(body.filter.run_ids or ())),
        fields=body.model_dump(exclude_unset=True, exclude={"filter", "dry_run", "limit"}))
    return bulk.run_bulk(svc.sessions, svc.catalog, svc.settings, request, _Signals(svc)).as_json()


@bp.get("/runs/<run_id>/compare/<other_id>")
def compare_runs(run_id: str, other_id: str):
    svc = services()
    with svc.sessions() as session:
        return compare.load(session, svc.catalog, principal().tenant_id, run_id, other_id)
