"""Event triggers and archived workflows, on real workers and a real scheduler (PostgreSQL, Redis)."""

from __future__ import annotations

import pytest

from tests.integration.conftest import by_id, publish, start, unique, wait_for, wait_run

pytestmark = pytest.mark.usefixtures("engine_processes")


def echo_steps() -> list[dict]:
    return [{"id": "echo", "type": "tool", "tool": "echo", "args": {"got": "{{ input }}"}}]


def wait_on(api, run_id: str, on: str) -> dict:
    def waiting():
        run = api.get(f"/runs/{run_id}").get_json()
        return run if run["status"] == "waiting" and run["waiting_on"] == on else None

    return wait_for(waiting, 20, f"run {run_id} to wait on {on}")


def runs_of(api, workflow_id: str) -> list[dict]:
    return api.get(f"/runs?workflow_id={workflow_id}").get_json()["runs"]


def test_an_event_with_two_matching_triggers_starts_two_runs_and_resumes_a_waiting_step(api):
    name, order = unique("ticket.created"), unique("o")
    templated = publish(api, {"name": "templated", "steps": echo_steps(), "triggers": [
        {"event": name, "input": {"ticket": "{{ event.payload.ticket }}", "by": "{{ event.id }}"}}]})
    filtered = publish(api, {"name": "filtered", "steps": echo_steps(), "triggers": [
        {"event": name, "when": "event.payload.priority == 'high'"}]})
    refused = publish(api, {"name": "filter says no", "steps": echo_steps(), "triggers": [
        {"event": name, "when": "event.payload.priority == 'low'"}]})
    other_name = publish(api, {"name": "another event", "steps": echo_steps(), "triggers": [{"event": unique("x")}]})
    waiting = start(api, publish(api, {"name": "waits", "steps": [
        {"id": "hook", "type": "wait_event", "correlation_key": "order-{{ input.order }}"}]}), {"order": order})
    wait_on(api, waiting, "event")

    event_id = unique("evt")
    body = {"name": name, "id": event_id, "correlation_key": f"order-{order}",
            "payload": {"ticket": "T-1", "priority": "high"}}
    answer = api.post("/events", json=body)
    assert answer.status_code == 202, answer.get_json()
    accepted = answer.get_json()
    assert accepted["id"] == event_id and not accepted["duplicate"]
    assert len(accepted["started_runs"]) == 2 and accepted["trigger_errors"] == []
    assert accepted["delivered_to"] == [{"run_id": waiting, "step_id": "hook"}]

    started = {run["workflow"]["id"]: run for run in (wait_run(api, r) for r in accepted["started_runs"])}
    assert set(started) == {templated, filtered}
    for run in started.values():
        assert run["status"] == "succeeded"
        assert (run["trigger_type"], run["triggered_by"]) == ("event", event_id)
    assert started[templated]["input"] == {"ticket": "T-1", "by": event_id}
    assert started[filtered]["input"] == body["payload"]  # no `input`: the payload
    resumed = wait_run(api, waiting)
    assert resumed["status"] == "succeeded" and by_id(resumed)["hook"]["output"]["payload"] == body["payload"]
    assert runs_of(api, refused) == [] and runs_of(api, other_name) == []

    again = api.post("/events", json=body)
    assert again.status_code == 202
    assert again.get_json() == {"id": event_id, "duplicate": True, "started_runs": [], "delivered_to": [],
                                "trigger_errors": []}
    assert len(runs_of(api, templated)) == 1 and len(runs_of(api, filtered)) == 1


def test_another_tenant_never_starts_this_tenants_workflows(api, tokens):
    name = unique("ticket.created")
    workflow = publish(api, {"name": "mine", "steps": echo_steps(), "triggers": [{"event": name}]})
    other = api.as_(tokens["other_tenant"]).post("/events", json={"name": name, "payload": {}})
    assert other.status_code == 202 and other.get_json()["started_runs"] == []
    assert runs_of(api, workflow) == []


def test_a_trigger_whose_input_fails_the_schema_is_reported_and_the_others_start(api):
    name = unique("order.paid")
    strict = publish(api, {"name": "strict", "steps": echo_steps(), "triggers": [{"event": name}], "input_schema": {
        "type": "object", "required": ["amount"], "properties": {"amount": {"type": "number"}}}})
    lenient = publish(api, {"name": "lenient", "steps": echo_steps(), "triggers": [{"event": name}]})
    accepted = api.post("/events", json={"name": name, "payload": {"amount": "twelve"}}).get_json()
    assert [e["workflow_id"] for e in accepted["trigger_errors"]] == [strict]
    assert accepted["trigger_errors"][0]["code"] == "invalid_request"
    assert [api.get(f"/runs/{r}").get_json()["workflow"]["id"] for r in accepted["started_runs"]] == [lenient]


@pytest.mark.parametrize(("trigger", "named"), [
    ({"event": "e", "when": "event.payload.x =="}, "triggers.0.when"),
    ({"event": "e", "when": "input.x == 1"}, "triggers.0.when"),
    ({"event": "e", "input": {"x": "{{ steps.a.output }}"}}, "triggers.0.input"),
    ({"event": "e", "input": {"x": "{{ event.__class__ }}"}}, "triggers.0.input"),
    ({"event": ""}, "triggers.0.event"),
    ({"event": "e", "unknown": 1}, "triggers.0.unknown"),
])
def test_a_trigger_is_checked_at_publish(api, trigger, named):
    answer = api.put(f"/workflows/{unique('wf')}", json={"name": "t", "steps": echo_steps(), "triggers": [trigger]})
    assert answer.status_code == 400
    assert any(named in p for p in answer.get_json()["error"]["details"]["problems"]), answer.get_json()


def test_an_archived_workflow_refuses_new_runs_keeps_its_live_ones_and_a_new_version_restores_it(api, tokens):
    name, order = unique("kick"), unique("o")
    definition = {"name": "archivable", "triggers": [{"event": name}], "steps": [
        {"id": "hook", "type": "wait_event", "correlation_key": "arch-{{ input.order }}"}]}
    workflow = publish(api, definition)
    live = start(api, workflow, {"order": order})
    wait_on(api, live, "event")

    assert api.as_(tokens["operator"]).delete(f"/workflows/{workflow}").status_code == 403
    archived = api.delete(f"/workflows/{workflow}")
    assert archived.status_code == 200 and archived.get_json()["archived_at"] is not None
    refused = api.post("/runs", json={"workflow_id": workflow, "input": {"order": "x"}})
    assert refused.status_code == 409 and refused.get_json()["error"]["code"] == "workflow_archived"
    assert api.post("/events", json={"name": name, "payload": {"order": "y"}}).get_json()["started_runs"] == []
    assert workflow not in [w["id"] for w in api.get("/workflows").get_json()["workflows"]]
    assert workflow in [w["id"] for w in api.get("/workflows?archived=true").get_json()["workflows"]]
    assert api.get("/workflows?archived=maybe").status_code == 400
    assert api.get(f"/workflows/{workflow}").get_json()["archived_at"] is not None

    delivered = api.post("/events", json={"correlation_key": f"arch-{order}", "payload": {"ok": True}}).get_json()
    assert delivered["delivered_to"] == [{"run_id": live, "step_id": "hook"}]
    assert wait_run(api, live)["status"] == "succeeded"  # its live run went on to the end

    publish(api, definition, workflow)
    assert api.get(f"/workflows/{workflow}").get_json()["archived_at"] is None
    assert workflow in [w["id"] for w in api.get("/workflows").get_json()["workflows"]]
    restored = [start(api, workflow, {"order": unique("o")})]
    restored += api.post("/events", json={"name": name, "payload": {"order": "z"}}).get_json()["started_runs"]
    assert len(restored) == 2
    for run_id in restored:  # leave nothing waiting behind
        wait_on(api, run_id, "event")
        assert api.post(f"/runs/{run_id}/cancel").status_code == 200
