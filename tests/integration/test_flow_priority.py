"""Priority (POST /runs {"priority": 1..9}, a workflow's default): ready steps of higher-priority runs
are admitted to their queue's window first, so priority-1 runs overtake a backlog of priority 5."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from orchestrator.db.session import transaction
from switchyard.client import Client
from tests.integration.conftest import publish, served, wait_for
from tests.integration.flow_stack import flow_stack

pytestmark = pytest.mark.integration


def test_priority_one_runs_overtake_a_backlog_of_priority_five(settings, artifacts):
    queue = "flow.prio"
    with flow_stack(settings, artifacts, tenants=("acme",), workers={"w": (queue, 1)}, windows={queue: 2}) as stack:
        api = stack.api("acme")
        step = [{"id": "a", "type": "tool", "tool": "sleep", "args": {"seconds": 0.2}, "queue": queue}]
        publish(api, {"name": "slow", "steps": step}, "slow")
        publish(api, {"name": "urgent by default", "priority": 2, "steps": step}, "urgent")
        backlog = [api.post("/runs", json={"workflow_id": "slow"}).get_json()["id"] for _ in range(40)]

        def priority_of(run_id: str) -> int:
            with transaction(stack.sessions) as session:
                return session.execute(text("SELECT priority FROM runs WHERE id = :id"), {"id": run_id}).scalar_one()

        wait_for(lambda: finished(stack, backlog) >= 1, 30, "the backlog to start")
        # The last of the backlog waits in the database: its diagnosis says why, GET /queues shows the window.
        causes = api.get(f"/runs/{backlog[-1]}/diagnosis").get_json()["causes"]
        assert [c["kind"] for c in causes] == ["window"], causes
        assert "places of the queue's dispatch window are in use" in causes[0]["message"]
        [shown] = [q for q in api.get("/queues").get_json()["queues"] if q["name"] == queue]
        assert shown["window"]["size"] == 2 and shown["window"]["in_use"] <= 2, shown
        assert shown["window"]["held"] >= 10 and shown["window"]["tenant"]["held"] == shown["window"]["held"], shown
        before = finished(stack, backlog)
        with served(stack.app) as url, Client(url, stack.tokens["acme"]) as client:  # the Python client, as the CLI
            urgent = [client.runs.start("slow", priority=1).id for _ in range(3)]
        by_default = api.post("/runs", json={"workflow_id": "urgent"}).get_json()["id"]
        wait_for(lambda: finished(stack, urgent) == 3, 30, "the priority-1 runs to finish")
        overtaken_by = finished(stack, backlog) - before
        assert [priority_of(r) for r in (*urgent, by_default, backlog[0])] == [1, 1, 1, 2, 5]
        # The window (2 places, one worker thread) held two of the backlog's steps when the first urgent
        # run came (the broker runs them first, in order); each place freed since went to an urgent run
        # until none was left, ahead of the rest of the backlog.
        assert overtaken_by <= 5, overtaken_by
        assert len(backlog) - finished(stack, backlog) >= 8
        wait_for(lambda: finished(stack, [by_default]) == 1, 30, "the workflow-default priority run")
        assert len(backlog) - finished(stack, backlog) >= 10
        refused = [api.post("/runs", json={"workflow_id": "slow", "priority": bad}) for bad in (0, 10, "1", True, 2.5)]
        assert [r.status_code for r in refused] == [400] * 5
        assert {r.get_json()["error"]["code"] for r in refused} == {"invalid_request"}


def finished(stack, run_ids: list[str]) -> int:
    with transaction(stack.sessions) as session:
        return session.execute(text("SELECT count(*) FROM runs WHERE id = ANY(:ids) AND status = 'succeeded'"),
                               {"ids": list(run_ids)}).scalar_one()
