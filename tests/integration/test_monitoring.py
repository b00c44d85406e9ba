"""GET /queues and GET /workers against the real broker and worker processes, and stock Flower."""

from __future__ import annotations

import socket

import httpx
import pytest

from tests.integration.conftest import Processes, publish, start, unique, wait_for

pytestmark = pytest.mark.usefixtures("engine_processes")


def worker_names(settings) -> set[str]:
    from orchestrator.broker import make_celery

    return {name for reply in make_celery(settings).control.ping(timeout=1) for name in reply}


def test_workers_lists_both_running_workers_with_their_pools(api, settings, tokens):
    body = api.as_(tokens["viewer"]).get("/workers").get_json()
    workers = {w["name"]: w for w in body["workers"]}
    assert set(workers) == worker_names(settings) and len(workers) == 2
    for w in workers.values():
        assert w["status"] == "online" and w["queues"] == [settings.default_queue]
        assert w["pool"]["implementation"].endswith("prefork:TaskPool")
        assert w["pool"]["max_concurrency"] == 3 and len(w["pool"]["processes"]) == 3


def test_workers_show_the_tenants_active_task_and_its_lease_heartbeat(api, tokens):
    workflow = publish(api, {"name": "busy", "steps": [
        {"id": "nap", "type": "tool", "tool": "sleep", "args": {"seconds": 3}}]})
    run_id = start(api, workflow)

    def running_somewhere():
        for w in api.get("/workers").get_json()["workers"]:
            for task in w["tasks"]:
                if task["run_id"] == run_id and w["last_heartbeat"]:
                    return w, task
        return None

    worker, task = wait_for(running_somewhere, 15, "the sleeping step to show up as an active task")
    assert task["step_id"] == "nap" and task["attempt"] == 1 and worker["active_tasks"] >= 1
    theirs = api.as_(tokens["other_tenant"]).get("/workers").get_json()["workers"]
    assert all(t["run_id"] != run_id for w in theirs for t in w["tasks"])
    api.post(f"/runs/{run_id}/cancel", json={})


def test_queues_show_a_queue_nobody_consumes_growing(api, settings):
    queue = unique("orphan")
    workflow = publish(api, {"name": "orphaned", "steps": [
        {"id": "lost", "type": "tool", "tool": "echo", "queue": queue}]})

    def depth_of(name):
        found = {q["name"]: q for q in api.get("/queues").get_json()["queues"]}
        return found.get(name)

    runs = []
    for expected in (1, 2):
        runs.append(start(api, workflow))
        # The depth (from the broker) and the rate (from the database) are read a moment apart.
        q = wait_for(lambda e=expected: (q := depth_of(queue)) and q["depth"] == q["enqueued_last_minute"] == e and q,
                     15, f"the depth of {queue} to reach {expected}")
        assert q["consumers"] == 0 and q["workers"] == [] and q["completed_last_minute"] == 0
    exposed = api.get("/metrics").get_data(as_text=True)
    assert f'switchyard_queue_depth{{queue="{queue}"}} 2.0' in exposed
    steps = depth_of(settings.default_queue)
    assert steps["consumers"] == 2 and set(steps["workers"]) == worker_names(settings)
    for run_id in runs:
        assert api.post(f"/runs/{run_id}/cancel", json={}).status_code == 200


@pytest.mark.parametrize("path", ["/queues", "/workers"])
def test_monitoring_needs_a_token(api, path):
    response = api.as_(None).get(path)
    assert response.status_code == 401 and response.get_json()["error"]["code"] == "unauthorized"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_stock_flower_sees_the_same_workers(api, settings, artifacts):
    port = free_port()
    flower = Processes(settings, artifacts)
    proc = flower.start("flower", "--app", "workers.app", "flower", f"--port={port}", "--address=127.0.0.1",
                        module="celery", env={"FLOWER_UNAUTHENTICATED_API": "true"})
    try:
        ours = {w["name"] for w in api.get("/workers").get_json()["workers"]}

        def flower_workers():
            assert proc.poll() is None, flower.log_tail("flower")
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/api/workers?refresh=1", timeout=5)
            except httpx.HTTPError:
                return None
            return response.status_code == 200 and set(response.json()) == ours and ours

        assert wait_for(flower_workers, 60, "Flower to list both workers", interval=0.5) == ours
        assert len(ours) == 2
    finally:
        flower.stop_all()
