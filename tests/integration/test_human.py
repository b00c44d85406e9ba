"""Runs that wait on people and on the outside world — approvals, questions (and an agent's
`human.ask`), inbound events and timers — against PostgreSQL, Redis, real workers and a real scheduler."""

from __future__ import annotations

from datetime import datetime

import pytest

from tests.integration.conftest import (
    by_id,
    events,
    publish,
    start,
    unique,
    wait_for,
    wait_no_task_of,
    wait_run,
)

pytestmark = pytest.mark.usefixtures("engine_processes")


def wait_waiting(api, run_id: str, on: str, timeout: float = 20) -> dict:
    def waiting():
        run = api.get(f"/runs/{run_id}").get_json()
        return run if run["status"] == "waiting" and run["waiting_on"] == on else None

    return wait_for(waiting, timeout, f"run {run_id} to wait on {on}: {events(api, run_id)}")


def when(event: dict) -> datetime:
    return datetime.fromisoformat(event["created_at"].replace("Z", "+00:00"))


def inbox(api, status: str = "pending") -> set[str]:
    response = api.get(f"/approvals?status={status}")
    assert response.status_code == 200
    return {a["id"] for a in response.get_json()["approvals"]}


# -- approvals --------------------------------------------------------------------------------------

REVIEWED = {
    "name": "reviewed draft",
    "steps": [
        # The scripted model echoes its prompt, so the draft shows what the reviewer asked for.
        {"id": "draft", "type": "llm", "model": "scripted",
         "prompt": "Draft about {{ input.topic }}{% if approval.comment %}; changes: {{ approval.comment }}{% endif %}"},
        {"id": "review", "type": "approval", "needs": ["draft"], "max_rounds": 2,
         "prompt": "Publish {{ steps.draft.output.text }}?"},
        {"id": "publish", "type": "tool", "tool": "echo", "needs": ["review"],
         "args": {"text": "{{ steps.draft.output.text }}", "by": "{{ steps.review.output.decided_by }}"}},
    ],
}


def test_approve_reject_and_request_changes_and_the_inbox(api):
    workflow = publish(api, REVIEWED)
    runs = {decision: start(api, workflow, {"topic": decision}) for decision in ("approve", "reject", "changes")}
    first = {}
    for decision, run_id in runs.items():
        run = wait_waiting(api, run_id, "approval")
        assert [a["status"] for a in run["approvals"]] == ["pending"] and run["pending_approvals"] == 1
        first[decision] = run["approvals"][0]
        assert first[decision]["prompt"] == f"Publish Draft about {decision}?"
    assert {a["id"] for a in first.values()} <= inbox(api)

    # Approve: the run goes on.
    approve = api.post(f"/runs/{runs['approve']}/approvals/{first['approve']['id']}/approve?triggered_by=alice",
                       json={"comment": "ship it"})
    assert approve.status_code == 200, approve.get_json()
    run = wait_run(api, runs["approve"])
    assert run["status"] == "succeeded" and run["approvals"] == [] and run["pending_approvals"] == 0
    assert by_id(run)["publish"]["output"] == {"text": "Draft about approve", "by": "alice"}

    # Reject: the run fails with approval_rejected.
    reject = api.post(f"/runs/{runs['reject']}/approvals/{first['reject']['id']}/reject", json={"comment": "no"})
    assert reject.status_code == 200
    run = wait_run(api, runs["reject"])
    assert run["status"] == "failed" and run["error"]["code"] == "approval_rejected"
    assert run["error"]["step_id"] == "review" and by_id(run)["publish"]["skipped_reason"] == "blocked"

    # Request changes: the draft runs again with the comment, and the approval asks again (round 2).
    changes = api.post(f"/runs/{runs['changes']}/approvals/{first['changes']['id']}/request_changes",
                       json={"comment": "shorter please"})
    assert changes.status_code == 200

    def asked_again():
        run = api.get(f"/runs/{runs['changes']}").get_json()
        pending = run["approvals"]
        return run if run["status"] == "waiting" and pending and pending[0]["round"] == 2 else None

    run = wait_for(asked_again, 20, "the approval to ask again after the changes")
    assert by_id(run)["draft"]["output"]["text"] == "Draft about changes; changes: shorter please"
    second = run["approvals"][0]
    assert len(run["approvals"]) == 1

    # The inbox lists exactly the pending ones: the second round, none of the decided approvals.
    pending = inbox(api)
    assert second["id"] in pending
    assert not {first["approve"]["id"], first["reject"]["id"], first["changes"]["id"]} & pending
    assert first["approve"]["id"] in inbox(api, "approved")
    assert first["reject"]["id"] in inbox(api, "rejected")

    # max_rounds is 2: a third round is refused and changes nothing; a decided approval cannot be decided again.
    again = api.post(f"/runs/{runs['changes']}/approvals/{second['id']}/request_changes", json={"comment": "more"})
    assert again.status_code == 409 and again.get_json()["error"]["code"] == "invalid_transition"
    twice = api.post(f"/runs/{runs['approve']}/approvals/{first['approve']['id']}/reject")
    assert twice.status_code == 409
    assert api.post(f"/runs/{runs['changes']}/approvals/{second['id']}/approve").status_code == 200
    run = wait_run(api, runs["changes"])
    assert run["status"] == "succeeded"
    assert by_id(run)["publish"]["output"]["text"] == "Draft about changes; changes: shorter please"
    assert second["id"] not in inbox(api)


def test_viewer_and_other_tenant_cannot_decide(api, tokens):
    workflow = publish(api, REVIEWED)
    run_id = start(api, workflow, {"topic": "x"})
    approval = wait_waiting(api, run_id, "approval")["approvals"][0]
    path = f"/runs/{run_id}/approvals/{approval['id']}/approve"
    assert api.as_(tokens["viewer"]).post(path).status_code == 403
    assert api.as_(tokens["other_tenant"]).post(path).status_code == 404
    assert approval["id"] not in inbox(api.as_(tokens["other_tenant"]))
    assert api.get(f"/runs/{run_id}").get_json()["approvals"][0]["status"] == "pending"
    api.post(f"/runs/{run_id}/cancel")


# -- questions --------------------------------------------------------------------------------------

def test_question_step_waits_for_the_answer(api):
    workflow = publish(api, {"name": "ask", "steps": [
        {"id": "ask", "type": "question", "question": "Which region for {{ input.customer }}?"},
        {"id": "use", "type": "tool", "tool": "echo", "needs": ["ask"], "args": {"region": "{{ steps.ask.output.answer }}"}},
    ]})
    run_id = start(api, workflow, {"customer": "acme"})
    wait_waiting(api, run_id, "question")
    questions = [q for q in api.get("/questions").get_json()["questions"] if q["run_id"] == run_id]
    assert [q["question"] for q in questions] == ["Which region for acme?"]

    answer = api.post(f"/runs/{run_id}/questions/{questions[0]['id']}/answer", json={"answer": "eu-west"})
    assert answer.status_code == 200, answer.get_json()
    run = wait_run(api, run_id)
    assert run["status"] == "succeeded" and by_id(run)["use"]["output"] == {"region": "eu-west"}
    again = api.post(f"/runs/{run_id}/questions/{questions[0]['id']}/answer", json={"answer": "us"})
    assert again.status_code == 409


def test_agent_human_ask_gives_the_worker_back_and_gets_the_answer(api, settings):

    workflow = publish(api, {"name": "agent asks", "steps": [
        {"id": "agent", "type": "agent", "model": "scripted", "tools": ["human.ask", "echo"], "script": [
            {"tool_calls": [{"name": "human.ask", "args": {"question": "Refund the order?"}}]},
            # Past the script's end the model echoes the last tool message: the person's answer.
        ]},
    ]})
    run_id = start(api, workflow)
    run = wait_waiting(api, run_id, "question")
    assert by_id(run)["agent"]["status"] == "waiting"
    wait_no_task_of(settings, run_id, 5, "the asking agent to give its worker back")
    question = next(q for q in api.get("/questions").get_json()["questions"] if q["run_id"] == run_id)
    assert question["question"] == "Refund the order?"

    api.post(f"/runs/{run_id}/questions/{question['id']}/answer", json={"answer": "yes, in full"})
    run = wait_run(api, run_id)
    output = by_id(run)["agent"]["output"]
    assert run["status"] == "succeeded"
    assert output["text"] == '{"answer": "yes, in full"}'
    assert output["tool_calls"] == [{"turn": 1, "name": "human.ask", "args": {"question": "Refund the order?"},
                                     "result": {"answer": "yes, in full"}}]


# -- events -----------------------------------------------------------------------------------------

def event_workflow(api, timeout_s: float = 3600, before: list | None = None) -> str:
    return publish(api, {"name": "wait for payment", "steps": [
        *(before or []),
        {"id": "paid", "type": "wait_event", "correlation_key": "order-{{ input.order }}", "timeout_s": timeout_s,
         "needs": [s["id"] for s in before or []]},
        {"id": "ship", "type": "tool", "tool": "echo", "needs": ["paid"],
         "args": {"amount": "{{ steps.paid.output.payload.amount }}"}},
    ]})


def test_event_continues_the_waiting_run_within_a_second(api):
    order = unique("o")
    run_id = start(api, event_workflow(api), {"order": order})
    wait_waiting(api, run_id, "event")
    response = api.post("/events", json={"correlation_key": f"order-{order}", "name": "paid", "payload": {"amount": 12}})
    assert response.status_code == 202
    assert response.get_json()["delivered_to"] == [{"run_id": run_id, "step_id": "paid"}]
    run = wait_run(api, run_id)
    assert run["status"] == "succeeded" and by_id(run)["ship"]["output"] == {"amount": 12}  # a lone template keeps its type
    log = events(api, run_id)
    received = next(e for e in log if e["type"] == "event_received")
    ship_started = next(e for e in log if e["type"] == "step_started" and e["step_id"] == "ship")
    # Both times are the database's: from the event's commit to the next step running on a worker.
    assert (when(ship_started) - when(received)).total_seconds() < 1.0


def test_event_that_arrives_before_the_wait_is_kept(api):
    order = unique("o")
    early = api.post("/events", json={"correlation_key": f"order-{order}", "payload": {"amount": 5}})
    assert early.status_code == 202 and early.get_json()["delivered_to"] == []
    before = [{"id": "prepare", "type": "tool", "tool": "sleep", "args": {"seconds": 0.2}}]
    run = wait_run(api, start(api, event_workflow(api, before=before), {"order": order}))
    assert run["status"] == "succeeded" and by_id(run)["paid"]["output"]["event_id"] == early.get_json()["id"]


def test_event_wait_times_out(api):
    run = wait_run(api, start(api, event_workflow(api, timeout_s=1), {"order": unique("o")}), timeout=20)
    assert run["status"] == "failed"
    assert by_id(run)["paid"]["error"]["code"] == "event_timeout" and run["error"]["code"] == "event_timeout"


# -- timers -----------------------------------------------------------------------------------------

def test_timer_fires_on_time_across_a_scheduler_restart(api, engine_processes):
    workflow = publish(api, {"name": "cool down", "steps": [
        {"id": "cool", "type": "timer", "duration_s": 3},
        {"id": "after", "type": "tool", "tool": "echo", "needs": ["cool"], "args": {"ok": 1}},
    ]})
    run_id = start(api, workflow)
    wait_waiting(api, run_id, "timer")
    engine_processes.stop("scheduler", kill=True)
    engine_processes.start("scheduler", "scheduler")
    run = wait_run(api, run_id, timeout=20)
    assert run["status"] == "succeeded"
    log = [e for e in events(api, run_id) if e["step_id"] == "cool"]
    parked = next(e for e in log if e["type"] == "step_waiting")
    fired = next(e for e in log if e["type"] == "step_completed")
    assert 3.0 <= (when(fired) - when(parked)).total_seconds() <= 5.0


# -- conversational workflows -----------------------------------------------------------------------

def test_conversational_workflows_have_no_run_actions(api, settings):
    workflow_id = unique("chat")
    definition = {"name": "chat", "steps": [{"id": "a", "type": "tool", "tool": "echo"}]}
    publish(api, definition, workflow_id)
    run_id = start(api, workflow_id)
    wait_run(api, run_id)
    publish(api, {**definition, "kind": "conversational"}, workflow_id)

    refused = api.post("/runs", json={"workflow_id": workflow_id, "input": {}})
    assert refused.status_code == 400 and refused.get_json()["error"]["code"] == "runtime_not_applicable"

    # The API cannot start a run of a conversational version, so point the finished run at one in the
    # database: every run action must then answer runtime_not_applicable, before the status check.
    from sqlalchemy import update

    from orchestrator.db.models import Run
    from orchestrator.db.session import make_engine

    engine = make_engine(settings)
    with engine.begin() as connection:
        connection.execute(update(Run).where(Run.id == run_id).values(workflow_version=2))
    engine.dispose()
    for action in ("pause", "resume", "cancel", "retry", "rerun"):
        response = api.post(f"/runs/{run_id}/{action}")
        assert response.status_code == 400, (action, response.get_json())
        assert response.get_json()["error"]["code"] == "runtime_not_applicable"
    assert api.get(f"/runs/{run_id}").get_json()["status"] == "succeeded"
