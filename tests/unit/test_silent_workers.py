"""The faster dead-worker signal: the worker monitor names a worker whose Celery heartbeats stopped
(fed events and rounds by hand, no broker), and the diagnosis names it for a running step whose lease has
not expired yet, with when it went quiet and when the lease gives the step back."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from orchestrator.diagnosis import StepFacts, diagnose, worker_name
from orchestrator.monitor import WorkerMonitor
from orchestrator.settings import Settings
from orchestrator.states import RunStatus, StepStatus

REDIS = Settings(broker_url="redis://127.0.0.1:1/0")


def beat(monitor: WorkerMonitor, name: str, ago_s: float = 0.0) -> None:
    monitor.on_event({"type": "worker-heartbeat", "hostname": name, "freq": 2.0, "processed": 1,
                      "local_received": time.time() - ago_s})


def test_a_worker_whose_heartbeats_expired_is_silent_since_its_last_one():
    monitor = WorkerMonitor(None, REDIS)
    beat(monitor, "alive@h", ago_s=1.0)
    beat(monitor, "dead@h", ago_s=4.5)  # two intervals of 2 s have passed
    found = monitor.silent(["alive@h", "dead@h"])
    assert list(found) == ["dead@h"] and abs(found["dead@h"] - (time.time() - 4.5)) < 0.5


def test_a_worker_shut_down_cleanly_is_silent_since_its_offline_event():
    monitor = WorkerMonitor(None, REDIS)
    beat(monitor, "a@h")
    monitor.on_event({"type": "worker-offline", "hostname": "a@h", "local_received": 1000.0})
    assert monitor.silent(["a@h"]) == {"a@h": 1000.0}
    beat(monitor, "a@h")  # back (a worker of the same name): heard again
    assert monitor.silent(["a@h"]) == {}


def test_a_worker_never_heard_is_silent_only_once_the_monitor_listened_long_enough():
    monitor = WorkerMonitor(None, REDIS)
    assert monitor.silent(["gone@h"]) == {}  # not listening: cannot tell
    monitor._listening_since = time.time() - 1.0
    assert monitor.silent(["gone@h"]) == {}  # a live worker may not have beaten yet
    monitor._listening_since = time.time() - 4.5
    assert monitor.silent(["gone@h"]) == {"gone@h": None}
    # One that answered an inspect round since the monitor began listening is not silent, heartbeats or
    # not (a worker started without them); an answer from before it listened says nothing.
    monitor._take_round({"gone@h": {}}, time.monotonic())
    assert monitor.silent(["gone@h"]) == {}
    monitor._listening_since = time.time() - 4.5
    monitor._answered["gone@h"] = monitor._listening_since - 1.0  # answered a second before it listened
    assert monitor.silent(["gone@h"]) == {"gone@h": monitor._answered["gone@h"]}


def test_without_events_no_worker_is_silent():
    monitor = WorkerMonitor(None, Settings())  # the embedded broker: no heartbeats, the lease alone tells
    monitor._take_round({}, time.monotonic())
    assert monitor.silent(["gone@h"]) == {}


def test_worker_name_of_a_steps_worker():
    assert worker_name("switchyard-41@box:57") == "switchyard-41@box"
    assert worker_name("solo") == "solo"
    assert worker_name(None) is None


NOW = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)


def running(worker: str = "switchyard-41@box:57", **kw) -> StepFacts:
    return StepFacts(step_id="s", type="tool", status=StepStatus.RUNNING, queue="steps", attempt=1, worker=worker,
                     lease_expires_at=NOW + timedelta(seconds=25), **kw)


def test_the_diagnosis_names_a_silent_worker_and_when_the_lease_gives_the_step_back():
    [cause] = diagnose("run_1", RunStatus.RUNNING, None, [running()], approvals={}, questions={}, consumers=None,
                       silent_workers={"switchyard-41@box": NOW - timedelta(seconds=3)})
    assert cause.kind == "worker_lost" and cause.step_id == "s"
    assert cause.message == ("worker switchyard-41@box stopped sending heartbeats at 2026-05-01T11:59:57.000Z; "
                             "step 's' will be recovered when its lease expires at 2026-05-01T12:00:25.000Z")
    assert "lease expires" in cause.action and cause.request is None


def test_a_worker_never_heard_is_named_without_a_time():
    [cause] = diagnose("run_1", RunStatus.RUNNING, None, [running()], approvals={}, questions={}, consumers=None,
                       silent_workers={"switchyard-41@box": None})
    assert cause.message.startswith("worker switchyard-41@box sends no heartbeats")


def test_a_step_of_another_worker_or_with_an_expired_lease_is_not_named_twice():
    silent = {"switchyard-41@box": NOW}
    assert diagnose("run_1", RunStatus.RUNNING, None, [running("switchyard-7@box:8")], approvals={}, questions={},
                    consumers=None, silent_workers=silent) == []
    # An expired lease is the cause already (the sweep reclaims it now): one cause, not two.
    causes = diagnose("run_1", RunStatus.RUNNING, None, [running(lease_expired=True)], approvals={}, questions={},
                      consumers=None, silent_workers=silent)
    assert [c.message for c in causes] == ["the worker running step 's' stopped heartbeating"]
