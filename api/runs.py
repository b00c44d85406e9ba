"""Runs: start, list, read, events, context."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime

from flask import Blueprint, request

from api import forks, monitoring, schemas, serializers
from api.auth import principal
from api.context import int_arg, parse_body, services
from api.controls import actor
from orchestrator import diagnosis, service
from orchestrator.core.vocabulary import WaitsOn
from orchestrator.db import repository as repo
from orchestrator.db.repository import concurrency as concurrency_rows
from orchestrator.errors import InvalidRequest, NotFound
from orchestrator.states import RunStatus, StepStatus

bp = Blueprint("runs", __name__)


@bp.post("/runs")
def start_run():
    body = parse_body(schemas.StartRun)
    workflow_id, version = body.workflow_id, body.version
    key = request.headers.get("Idempotency-Key")
    if key is not None and not 1 <= len(key) <= 200:
        raise InvalidRequest("Idempotency-Key must be 1-200 characters")
    who, by = principal(), actor()
    svc = services()
    with svc.at_once() as session:
        started = service.start_run(
            session, svc.settings, who.tenant_id, workflow_id, body.input, version=version,
            idempotency_key=key, body_hash=service.request_hash(body.model_dump(exclude_unset=True)) if key else None,
            trigger_type="api", triggered_by=by.triggered_by or who.token_id, first_pass=True, catalog=svc.catalog,
            priority=body.priority,
        )
        # A new run's answer is what was just written; the run a replayed Idempotency-Key names is read.
        result = serializers.new_run(started) if started.created else serializers.full_run(session, started.run)
    forks.after_start(svc, started)
    return result, 201 if started.created else 200


def _cursor_decode(raw: str) -> tuple[datetime, str]:
    try:
        created, _, run_id = base64.urlsafe_b64decode(raw.encode() + b"==").decode().partition("|")
        return datetime.fromisoformat(created), run_id
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidRequest("'cursor' is not a cursor this API gave out; use next_cursor from a previous page") from None


def _cursor_encode(created: datetime, run_id: str) -> str:
    return base64.urlsafe_b64encode(f"{created.isoformat()}|{run_id}".encode()).decode().rstrip("=")


@bp.get("/runs")
def list_runs():
    status = request.args.get("status") or None
    if status is not None and status not in RunStatus.__members__.values():
        raise InvalidRequest(f"'status' must be one of {[s.value for s in RunStatus]}")
    limit = int_arg("limit", 50, 1, 500)
    cursor = request.args.get("cursor")
    before = _cursor_decode(cursor) if cursor else None
    who = principal()
    with services().sessions() as session:
        runs = repo.list_runs(session, who.tenant_id, status=status,
                              workflow_id=request.args.get("workflow_id") or None, limit=limit + 1, before=before,
                              parent_run_id=request.args.get("parent_run_id") or None)
        names = {w.id: w.name for w in repo.list_workflows(session, who.tenant_id)}
        page = runs[:limit]
        pending = repo.pending_approvals(session, [r.id for r in page])
        current = repo.current_steps(session, [r.id for r in page])
        next_cursor = _cursor_encode(page[-1].created_at, page[-1].id) if len(runs) > limit else None
        return {"runs": [serializers.run_json(r, names.get(r.workflow_id), None, len(pending[r.id]),
                                              serializers.current_step(current[r.id])) for r in page],
                "next_cursor": next_cursor}


def _load_run(session, run_id: str):
    run = repo.get_run(session, principal().tenant_id, run_id)
    if run is None:
        raise NotFound(f"run {run_id!r} not found")
    return run


@bp.get("/runs/<run_id>")
def get_run(run_id: str):
    with services().sessions() as session:
        return serializers.full_run(session, _load_run(session, run_id))


@bp.get("/runs/<run_id>/events")
def run_events(run_id: str):
    after = int_arg("after", 0, 0, 2**31 - 1)
    limit = int_arg("limit", 1000, 1, 5000)
    with services().sessions() as session:
        _load_run(session, run_id)
        events = repo.run_events(session, run_id, after, limit)
        return {"events": [serializers.event_json(e) for e in events],
                "next_after": events[-1].seq if events else after}


@bp.get("/runs/<run_id>/context")
def run_context(run_id: str):
    with services().sessions() as session:
        run = _load_run(session, run_id)
        steps = repo.run_steps(session, run.id)
        return {
            "run": {"id": run.id, "attempt": run.attempt, "workflow_id": run.workflow_id},
            "input": run.input,
            "steps": {s.step_id: {"status": s.status, "output": s.output} for s in steps},
        }


# A queued step older than this may be on a queue nobody consumes: the diagnosis asks the workers.
QUEUED_LONG_S = 3.0


@bp.get("/runs/<run_id>/diagnosis")
def run_diagnosis(run_id: str):
    """Why a run is not moving, and the operator action that would move it."""
    svc = services()
    with svc.sessions() as session:
        run = _load_run(session, run_id)
        steps, approvals, questions = repo.diagnosis_facts(session, run.id)
        keys = (concurrency_rows.waits(session, run, svc.catalog.get(session, (
            run.tenant_id, run.workflow_id, run.workflow_version)))
            if run.waiting_on == WaitsOn.CONCURRENCY or any(s.waiting_on == WaitsOn.CONCURRENCY for s in steps) else [])
    status = RunStatus(run.status)
    # Only a step that has waited a while for a worker makes the queues' consumers worth reading; they
    # come from the worker monitor's memory (what the workers broadcast), not from a broadcast now.
    stuck = any(s.status is StepStatus.QUEUED and (s.queued_for_s or 0) >= QUEUED_LONG_S for s in steps)
    consumers = (monitoring.consumer_counts(svc) if stuck and not svc.settings.uses_embedded_broker else None)
    # A running step's worker that stopped sending Celery heartbeats is named long before its lease expires.
    running_on = diagnosis.workers_running(steps)
    causes = diagnosis.diagnose(run.id, status, run.error, steps, approvals=approvals, questions=questions,
                                consumers=consumers, silent_workers=monitoring.silent_workers(svc, running_on),
                                concurrency=keys)
    return {"run_id": run.id, "status": run.status, "waiting_on": run.waiting_on,
            "causes": [c.as_json() for c in causes]}


@bp.get("/runs/<run_id>/steps/<step_id>/items")
def step_items(run_id: str, step_id: str):
    """A for-each step's items in index order, a page at a time (``cursor``: the last index seen)."""
    status = request.args.get("status") or None
    if status is not None and status not in StepStatus.__members__.values():
        raise InvalidRequest(f"'status' must be one of {[s.value for s in StepStatus]}")
    limit = int_arg("limit", 50, 1, 500)
    cursor = request.args.get("cursor")
    if cursor is not None and not cursor.isdigit():
        raise InvalidRequest("'cursor' is not a cursor this API gave out; use next_cursor from a previous page")
    with services().sessions() as session:
        run = _load_run(session, run_id)
        step = repo.run_step(session, run.id, step_id)
        if step is None or step.item_of is not None:
            raise NotFound(f"run {run_id!r} has no step {step_id!r}")
        if step.item_counts is None:
            raise InvalidRequest(f"step {step_id!r} has no items: it is not a for-each step, or has not started")
        found = repo.list_items(session, run.id, step_id, status=status,
                                after=int(cursor) if cursor is not None else None, limit=limit + 1)
    page = found[:limit]
    return {"items": [serializers.item_json(row) for row in page],
            "next_cursor": str(page[-1].item_index) if len(found) > limit else None}
