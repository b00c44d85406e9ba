"""Monitoring: Prometheus metrics, the Celery queues and the workers.

Workers and their queues come from the app's ``orchestrator.monitor.WorkerMonitor``, which keeps them
in the background: no request waits for the workers' replies.

Queues and workers are shared by every tenant: their depths, consumers and pools are the
installation's; the rates and the tasks listed are the caller's tenant's only.
"""

from __future__ import annotations

import os
import threading
from datetime import UTC, datetime, timedelta

from flask import Blueprint, Response, current_app, request
from prometheus_client import generate_latest

from api import serializers
from api.auth import is_public, principal
from api.context import services
from orchestrator import admission, broker, metrics, monitor
from orchestrator.db import repository as repo
from orchestrator.db.repository import concurrency as concurrency_rows

bp = Blueprint("monitoring", __name__)

RATE_WINDOW = timedelta(minutes=1)
MONITOR = "switchyard.monitor"  # the app's extensions key of its WorkerMonitor


@bp.get("/metrics", endpoint="metrics")
def metrics_view():
    """Prometheus text. Public (every tenant) with SWITCHYARD_METRICS_PUBLIC=1; otherwise a viewer
    token sees its own tenant's series (and the depths of the queues its live steps use)."""
    svc = services()
    # Public: every tenant. Otherwise the token's tenant (every role can read, so no further check).
    tenant_id = None if is_public(request.endpoint) else principal().tenant_id
    collector = metrics.DatabaseCollector(svc.sessions, tenant_id, svc.settings.default_queue,
                                          lambda names: broker.queue_depths(svc.celery, names))
    # Then what this process counted itself (its broker calls dropped, rate limits counted locally).
    return Response(metrics.render(collector) + generate_latest(broker.process_metrics()["registry"]), content_type=metrics.CONTENT_TYPE)


@bp.get("/queues")
def queues():
    """Each step queue: depth read from the broker, its consumers (the online workers that consume it,
    from the monitor), the tenant's steps enqueued and completed in the last minute (from the database),
    and its dispatch window (orchestrator/admission.py: places in use and held messages, the tenant's share);
    and the tenant's concurrency keys that are held or waited for, with their counts."""
    svc, tenant_id = services(), principal().tenant_id
    with svc.sessions() as session:
        now = repo.now(session)
        rates = repo.step_queue_rates(session, tenant_id, now - RATE_WINDOW)
        names = repo.live_step_queues(session, tenant_id) | set(rates) | {svc.settings.default_queue}
        windows = admission.window_report(session, svc.settings, tenant_id)
        keys = concurrency_rows.key_report(session, tenant_id)
        names |= set(windows)
    consumers: dict[str, list[str]] = {}
    for worker in _monitor(svc).workers():
        for queue in worker.queues:
            consumers.setdefault(queue, []).append(worker.name)
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
                "window": windows.get(name) or admission.empty_window(svc.settings, name),
            }
            for name in sorted(names)
        ],
        "concurrency": keys,
        "at": serializers.ts(now),
    }


@bp.get("/workers")
def workers():
    """The online workers (from the monitor: heartbeats, task events, a background inspect): pool,
    queues, active tasks (the tenant's listed), and the last lease heartbeat any of their processes wrote."""
    svc, tenant_id = services(), principal().tenant_id
    online = _monitor(svc).workers()
    tasks = {w.name: [_task(t) for t in w.active] for w in online}
    with svc.sessions() as session:
        leases = repo.lease_heartbeats(session)
        mine = repo.runs_of_tenant(session, tenant_id, {t["run_id"] for ts in tasks.values() for t in ts})
    lease = timedelta(seconds=svc.settings.lease_s)
    result = []
    for w in online:
        beats = [expires - lease for worker, expires in leases.items() if worker.startswith(f"{w.name}:")]
        result.append({
            "name": w.name,
            "status": "online",
            "pool": {"implementation": w.pool.get("implementation"), "max_concurrency": w.pool.get("max-concurrency"),
                     "processes": w.pool.get("processes") or []},
            "queues": w.queues,
            "active_tasks": len(tasks[w.name]),
            "tasks": [t for t in tasks[w.name] if t["run_id"] in mine],
            "processed": w.processed,
            "last_heartbeat": serializers.ts(max(beats)) if beats else None,
            "answered_at": serializers.ts(datetime.fromtimestamp(w.seen_at, UTC)),
        })
    return {"workers": result}


def _task(task_id: str) -> dict:
    run_id, step_id, attempt = monitor.attempt_of(task_id)
    return {"task_id": task_id, "run_id": run_id, "step_id": step_id, "attempt": attempt}


_STARTING = threading.Lock()


def consumer_counts(svc) -> dict[str, int]:
    """How many online workers consume each queue, from the worker monitor (no broadcast on the
    request path)."""
    counts: dict[str, int] = {}
    for worker in _monitor(svc).workers():
        for queue in worker.queues:
            counts[queue] = counts.get(queue, 0) + 1
    return counts


def silent_workers(svc, names: set[str]) -> dict[str, datetime | None]:
    """Of the Celery workers ``names``, those that stopped sending heartbeats, with when they were last
    heard (None: never, by this process); from the worker monitor's memory."""
    if not names or svc.settings.uses_embedded_broker:  # no heartbeats there: the lease alone tells
        return {}
    return {name: None if at is None else datetime.fromtimestamp(at, UTC)
            for name, at in _monitor(svc).silent(names).items()}


def _monitor(svc) -> monitor.WorkerMonitor:
    """The app's worker monitor, started by the first request that needs it in this process (a forked
    process starts its own); that request alone may wait for the monitor's first round."""
    found = current_app.extensions.get(MONITOR)
    if found is None or found.pid != os.getpid():
        with _STARTING:
            found = current_app.extensions.get(MONITOR)
            if found is None or found.pid != os.getpid():
                found = current_app.extensions[MONITOR] = monitor.WorkerMonitor(svc.celery, svc.settings).start()
    found.wait_ready(svc.settings.inspect_timeout_s + 1.0)
    return found
