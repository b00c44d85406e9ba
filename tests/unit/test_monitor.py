"""The worker monitor's bookkeeping, fed events and inspect rounds by hand (no broker, no threads)."""

from __future__ import annotations

import time

from orchestrator.monitor import WorkerMonitor, attempt_of
from orchestrator.settings import Settings

REDIS = Settings(broker_url="redis://127.0.0.1:1/0")


def answer(queue: str = "steps", active: tuple[str, ...] = ()) -> dict:
    return {"stats": {"pool": {"implementation": "celery.concurrency.prefork:TaskPool", "max-concurrency": 2},
                      "total": {"switchyard.run_step": 5}},
            "active_queues": [{"name": queue}], "active": [{"id": t} for t in active]}


def beat(monitor: WorkerMonitor, name: str, ago_s: float = 0.0, processed: int = 7) -> None:
    monitor.on_event({"type": "worker-heartbeat", "hostname": name, "freq": 2.0, "processed": processed,
                      "local_received": time.time() - ago_s})


def names(monitor: WorkerMonitor) -> list[str]:
    return [w.name for w in monitor.workers()]


def test_a_worker_is_online_while_its_heartbeat_is_fresh():
    monitor = WorkerMonitor(None, REDIS)
    beat(monitor, "a@h")
    beat(monitor, "b@h", ago_s=4.5)  # two intervals of 2 s have passed: expired
    monitor._take_round({"a@h": answer(), "b@h": answer()}, time.monotonic())
    [a] = monitor.workers()
    assert (a.name, a.queues, a.pool["max-concurrency"], a.processed) == ("a@h", ["steps"], 2, 7)
    monitor.on_event({"type": "worker-offline", "hostname": "a@h"})
    assert names(monitor) == []


def test_without_heartbeats_the_latest_round_decides():
    monitor = WorkerMonitor(None, Settings())  # the embedded broker: no events
    monitor._take_round({"a@h": answer(), "b@h": answer()}, time.monotonic())
    assert names(monitor) == ["a@h", "b@h"] and monitor.workers()[0].processed == 5
    monitor._take_round({"a@h": answer()}, time.monotonic())
    assert names(monitor) == ["a@h"]


def test_active_tasks_from_events_and_rounds():
    monitor = WorkerMonitor(None, REDIS)
    beat(monitor, "a@h")
    monitor._take_round({"a@h": answer(active=("run_1.old.1",))}, time.monotonic())  # running before we listened
    monitor.on_event({"type": "task-started", "hostname": "a@h", "uuid": "run_1.s.1"})
    monitor.on_event({"type": "task-started", "hostname": "a@h", "uuid": "run_1.lost.1"})
    assert monitor.workers()[0].active == ["run_1.lost.1", "run_1.old.1", "run_1.s.1"]
    monitor.on_event({"type": "task-succeeded", "hostname": "a@h", "uuid": "run_1.old.1"})
    # A round that no longer lists a task whose end event was lost drops it.
    monitor._take_round({"a@h": answer(active=("run_1.s.1",))}, time.monotonic())
    assert monitor.workers()[0].active == ["run_1.s.1"]


def test_attempt_of_a_task_id():
    assert attempt_of("run_ab.fetch.v2.3") == ("run_ab", "fetch.v2", 3)
    assert attempt_of("celery-task-id") == (None, None, None)
