"""Concurrency keys on real processes (two schedulers admitting at once, workers, a database of their
own): a workflow's key of limit 1 serialises one customer's runs (in priority order, then oldest first)
while another customer's run goes on; a step key shared by two workflows never lets their steps
overlap; a holder whose worker is SIGKILLed releases its key when its lease expires, and the waiter
runs. The diagnosis names the key and its holders, GET /queues counts the waiters per key."""

from __future__ import annotations

import json
import time
from datetime import datetime

import pytest

from tests.integration.conftest import publish, wait_for
from tests.integration.flow_stack import flow_stack

pytestmark = pytest.mark.integration

QUEUE = "flow.keys"
KILL_QUEUE = "flow.keys.kill"


WINDOWS = {QUEUE: 16, KILL_QUEUE: 4}


@pytest.fixture(scope="module")
def stack(settings, tmp_path_factory):
    with flow_stack(settings, tmp_path_factory.mktemp("keys"), tenants=("acme",), workers={"w": (QUEUE, 4)},
                    windows=WINDOWS) as built:
        # A second scheduler: two passes admitting at once must still never exceed a limit.
        built.procs.start("keys-scheduler-2", "scheduler", env=_env(built))
        yield built


def _env(stack) -> dict[str, str]:
    return {"SWITCHYARD_QUEUE_WINDOWS": json.dumps(WINDOWS), "SWITCHYARD_WAKE_QUEUE": stack.settings.wake_queue,
            "SWITCHYARD_DATABASE_URL": stack.settings.database_url}


def _sleep(seconds: float | str, queue: str = QUEUE, **fields) -> dict:
    return {"id": "call", "type": "tool", "tool": "sleep", "args": {"seconds": seconds}, "queue": queue, **fields}


def _start(api, workflow_id: str, run_input: dict, **body) -> str:
    response = api.post("/runs", json={"workflow_id": workflow_id, "input": run_input, **body})
    assert response.status_code == 201, response.get_json()
    return response.get_json()["id"]


def _all_done(api, run_ids, timeout: float = 60) -> dict[str, dict]:
    def done():
        runs = {r: api.get(f"/runs/{r}").get_json() for r in run_ids}
        return runs if all(run["status"] == "succeeded" for run in runs.values()) else None
    return wait_for(done, timeout, f"runs {run_ids} to succeed", interval=0.2)


def _at(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _overlaps(spans: list[tuple[datetime, datetime]]) -> list[tuple]:
    spans = sorted(spans)
    return [(a, b) for a, b in zip(spans, spans[1:], strict=False) if b[0] < a[1]]


def test_a_workflow_key_of_limit_one_serialises_a_customers_runs_while_another_customers_go_on(stack):
    api = stack.api("acme")
    workflow = publish(api, {"name": "per customer", "concurrency": {"key": "{{ input.customer }}", "limit": 1},
                             "steps": [_sleep("{{ input.seconds }}")]}, "per-customer")
    # The first run holds the key long enough for the checks while the others wait.
    first = _start(api, workflow, {"customer": "a", "seconds": 3})
    wait_for(lambda: api.get(f"/runs/{first}").get_json()["status"] == "running", 30, "the first run to start")
    later = [_start(api, workflow, {"customer": "a", "seconds": 0.5}) for _ in range(2)]
    urgent = _start(api, workflow, {"customer": "a", "seconds": 0.5}, priority=1)
    other = _start(api, workflow, {"customer": "b", "seconds": 0.5})

    def held():
        runs = [api.get(f"/runs/{r}").get_json() for r in [*later, urgent]]
        return all((r["status"], r["waiting_on"]) == ("queued", "concurrency") for r in runs)
    wait_for(held, 10, "customer a's later runs to wait queued on concurrency")
    causes = api.get(f"/runs/{later[-1]}/diagnosis").get_json()["causes"]
    assert [c["kind"] for c in causes] == ["concurrency"], causes
    assert "'a'" in causes[0]["message"] and "limit 1" in causes[0]["message"] and first in causes[0]["message"]
    [key] = [k for k in api.get("/queues").get_json()["concurrency"]["workflow_keys"] if k["key"] == "a"]
    assert key == {"workflow_id": workflow, "key": "a", "active": 1, "waiting": 3}, key

    runs = _all_done(api, [first, *later, urgent, other])
    spans = {r: (_at(run["started_at"]), _at(run["completed_at"])) for r, run in runs.items()}
    assert _overlaps([spans[r] for r in (first, *later, urgent)]) == []
    # Priority first, then age: the priority-1 run went right after the holder, ahead of two older runs.
    assert sorted((first, *later, urgent), key=lambda r: spans[r][0]) == [first, urgent, *later]
    # Customer b's run did not wait for a's: it ran (and finished) while a's runs still waited.
    assert spans[other][1] < spans[later[-1]][0]
    print(f"\nkeys: 4 runs of one customer serialised over "
          f"{(spans[later[-1]][1] - spans[first][0]).total_seconds():.1f} s; the other customer's run took "
          f"{(spans[other][1] - spans[other][0]).total_seconds():.1f} s")


def test_a_step_key_shared_by_two_workflows_never_lets_their_steps_overlap(stack):
    api = stack.api("acme")
    key = {"key": "vendor-{{ input.vendor }}", "limit": 1}
    plain = publish(api, {"name": "calls the vendor", "steps": [_sleep(0.4, concurrency=key)]}, "vendor-plain")
    chained = publish(api, {"name": "prepares, then calls the vendor", "steps": [
        {"id": "prep", "type": "tool", "tool": "echo", "args": {"text": "ready"}, "queue": QUEUE},
        _sleep(0.4, concurrency=key, needs=["prep"])]}, "vendor-chained")
    runs = [_start(api, workflow, {"vendor": "v1"}) for _ in range(3) for workflow in (plain, chained)]
    # The newest run's step waits the longest (waiters start by priority, then age).
    waiting = runs[-1]

    def waits():
        call = next(s for s in api.get(f"/runs/{waiting}").get_json()["steps"] if s["id"] == "call")
        return (call["status"], call["waiting_on"]) == ("pending", "concurrency")
    wait_for(waits, 10, "the newest run's step to wait pending on its key")
    causes = api.get(f"/runs/{waiting}/diagnosis").get_json()["causes"]
    [cause] = [c for c in causes if c["kind"] == "concurrency"]
    assert cause["step_id"] == "call" and "'vendor-v1'" in cause["message"] and "limit 1" in cause["message"], causes
    shown = api.get("/queues").get_json()["concurrency"]["step_keys"]
    assert [k["key"] for k in shown] == ["vendor-v1"] and shown[0]["running"] <= 1 and shown[0]["waiting"] >= 1, shown

    done = _all_done(api, runs)
    calls = [next(s for s in run["steps"] if s["id"] == "call") for run in done.values()]
    spans = [(_at(c["started_at"]), _at(c["completed_at"])) for c in calls]
    assert _overlaps(spans) == [], spans
    assert {run["workflow"]["id"] for run in done.values()} == {plain, chained}
    assert api.get("/queues").get_json()["concurrency"]["step_keys"] == []


def test_a_holder_whose_worker_is_killed_releases_its_key_when_its_lease_expires(stack):
    api = stack.api("acme")
    key = {"key": "license", "limit": 1}
    # The holder runs on a worker of its own, which is killed; the waiter on the stack's worker.
    holder_flow = publish(api, {"name": "holds the license", "steps": [_sleep(60, KILL_QUEUE, concurrency=key)]},
                          "license-holder")
    waiter_flow = publish(api, {"name": "waits for the license", "steps": [_sleep(0.2, concurrency=key)]},
                          "license-waiter")
    stack.procs.start("keys-doomed-worker", "worker", "--concurrency", "1", "--pool", "prefork",
                      "--queues", KILL_QUEUE, env=_env(stack))
    holder = _start(api, holder_flow, {})

    def call_of(run_id: str) -> dict:
        return next(s for s in api.get(f"/runs/{run_id}").get_json()["steps"] if s["id"] == "call")
    wait_for(lambda: call_of(holder)["status"] == "running", 60, "the holder's step to run on the doomed worker")
    waiter = _start(api, waiter_flow, {})
    wait_for(lambda: call_of(waiter)["waiting_on"] == "concurrency", 10, "the waiter to wait on the key")
    [cause] = [c for c in api.get(f"/runs/{waiter}/diagnosis").get_json()["causes"] if c["kind"] == "concurrency"]
    assert holder in cause["message"], cause
    stack.procs.stop("keys-doomed-worker", kill=True)
    killed_at = time.monotonic()
    bound = stack.settings.lease_s + stack.settings.sweep_interval_s
    run = wait_for(lambda: (r := api.get(f"/runs/{waiter}").get_json())["status"] == "succeeded" and r,
                   bound + 10, f"the waiter to succeed within a lease and a sweep ({bound:g} s) of the kill",
                   interval=0.2)
    took = time.monotonic() - killed_at
    # The key was held until the holder's lease expired: the waiter did not start before.
    assert took >= stack.settings.lease_s * 0.5, took
    lost = [e for e in api.get(f"/runs/{holder}/events").get_json()["events"]
            if e["type"] in ("step_retrying", "step_failed") and e["step_id"] == "call"]
    assert lost and lost[0]["data"]["error"]["code"] == "worker_lost", lost
    assert _at(next(s for s in run["steps"] if s["id"] == "call")["started_at"]) > _at(lost[0]["created_at"])
    # The holder's next attempt waits for the key (the waiter held it), then for a worker of its queue.
    api.post(f"/runs/{holder}/cancel", json={})
    print(f"\nkeys: the waiter succeeded {took:.1f} s after the holder's worker was killed "
          f"(lease {stack.settings.lease_s:g} s, sweep {stack.settings.sweep_interval_s:g} s)")
