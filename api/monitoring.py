"""Monitoring: Prometheus metrics, the Celery queues and the workers.

Queues and workers are shared by every tenant: their depths, consumers and pools are the
installation's; the rates and the tasks listed are the caller's tenant's only.
"""

from __future__ import annotations

from datetime import timedelta

from flask import Blueprint, Response, request

from api import serializers
from api.auth import is_public, principal
from api.context import services
from orchestrator import broker, metrics
from orchestrator.db import repository as repo

bp = Blueprint("monitoring", __name__)

RATE_WINDOW = timedelta(minutes=1)


@bp.get("/metrics", endpoint="metrics")
def metrics_view():
    """Prometheus text. Public (every tenant) with SWITCHYARD_METRICS_PUBLIC=1; otherwise a viewer
    token sees its own tenant's series (and the depths of the queues its live steps use)."""
    svc = services()
    # Public: every tenant. Otherwise the token's tenant (every role can read, so no further check).
    tenant_id = None if is_public(request.endpoint) else principal().tenant_id
    collector = metrics.DatabaseCollector(svc.sessions, tenant_id, svc.settings.default_queue,
                                          lambda names: broker.queue_depths(svc.celery, names))
    return Response(metrics.render(collector), content_type=metrics.CONTENT_TYPE)


@bp.get("/queues")
def queues():
    """Each step queue: depth read from the broker, consuming workers (Celery inspect), and the
    tenant's steps enqueued and completed in the last minute (from the database)."""
    svc, tenant_id = services(), principal().tenant_id
    with svc.sessions() as session:
        now = repo.now(session)
        rates = repo.step_queue_rates(session, tenant_id, now - RATE_WINDOW)
        names = repo.live_step_queues(session, tenant_id) | set(rates) | {svc.settings.default_queue}
    workers = broker.inspect_workers(svc.celery, svc.settings.inspect_timeout_s)
    consumers: dict[str, list[str]] = {}
    for worker, answer in workers.items():
        for queue in answer["active_queues"] or []:
            consumers.setdefault(queue["name"], []).append(worker)
    names |= set(consumers) - {svc.settings.wake_queue}
    depths = broker.queue_depths(svc.celery, names)
    return {
        "queues": [
            {
                "name": name,
                "depth": depths[name],
                "consumers": len(consumers.get(name, [])),
                "workers": sorted(consumers.get(name, [])),
                "enqueued_last_minute": rates.get(name, {}).get("enqueued", 0),
                "completed_last_minute": rates.get(name, {}).get("completed", 0),
            }
            for name in sorted(names)
        ],
        "at": serializers.ts(now),
    }


@bp.get("/workers")
def workers():
    """The workers that answered Celery's inspect: pool, queues, active tasks (the tenant's listed),
    and the last lease heartbeat any of their processes wrote."""
    svc, tenant_id = services(), principal().tenant_id
    answers = broker.inspect_workers(svc.celery, svc.settings.inspect_timeout_s)
    tasks = {name: [_task(t) for t in answer["active"] or []] for name, answer in answers.items()}
    with svc.sessions() as session:
        now = repo.now(session)
        leases = repo.lease_heartbeats(session)
        mine = repo.runs_of_tenant(session, tenant_id, {t["run_id"] for ts in tasks.values() for t in ts})
    lease = timedelta(seconds=svc.settings.lease_s)
    result = []
    for name, answer in answers.items():
        stats = answer["stats"] or {}
        pool = stats.get("pool") or {}
        beats = [expires - lease for worker, expires in leases.items() if worker.startswith(f"{name}:")]
        result.append({
            "name": name,
            "status": "online",
            "pool": {"implementation": pool.get("implementation"), "max_concurrency": pool.get("max-concurrency"),
                     "processes": pool.get("processes") or []},
            "queues": sorted(q["name"] for q in answer["active_queues"] or []),
            "active_tasks": len(tasks[name]),
            "tasks": [t for t in tasks[name] if t["run_id"] in mine],
            "processed": sum((stats.get("total") or {}).values()),
            "last_heartbeat": serializers.ts(max(beats)) if beats else None,
            "answered_at": serializers.ts(now),
        })
    return {"workers": result}


def _task(task: dict) -> dict:
    args = list(task.get("args") or []) + [None] * 3
    return {"task_id": task.get("id"), "run_id": args[0], "step_id": args[1], "attempt": args[2]}
