"""The corrections of part 1 of the contract, through the real API and workers: `pending_approvals` is a
number (the requests are in `approvals`, the open questions in `questions`), `current_step` is set in
lists too, a question step takes its text in `prompt`, approvals and questions share one status
vocabulary, and an unknown action answers 404 listing the valid ones."""

from __future__ import annotations

import pytest

from tests.integration.conftest import publish, start, wait_for, wait_run

pytestmark = pytest.mark.usefixtures("engine_processes")


def waiting_on(api, run_id: str, what: str) -> dict:
    def waiting():
        run = api.get(f"/runs/{run_id}").get_json()
        return run if run["status"] == "waiting" and run["waiting_on"] == what else None

    return wait_for(waiting, 30, f"run {run_id} to wait on {what}")


def test_a_run_waiting_on_people_counts_its_approvals_and_lists_its_questions(api):
    workflow = publish(api, {"name": "people", "steps": [
        {"id": "ask", "type": "question", "prompt": "Which region for {{ input.customer }}?"},
        {"id": "review", "type": "approval", "needs": ["ask"], "prompt": "Ship to {{ steps.ask.output.answer }}?"},
    ]})
    run_id = start(api, workflow, {"customer": "acme"})
    run = waiting_on(api, run_id, "question")
    assert (run["pending_approvals"], run["approvals"], run["current_step"]) == (0, [], "ask")
    [question] = run["questions"]
    assert (question["question"], question["status"]) == ("Which region for acme?", "pending")
    assert question["id"] in {q["id"] for q in api.get("/questions").get_json()["questions"]}  # pending: the default
    listed = next(r for r in api.get(f"/runs?workflow_id={workflow}").get_json()["runs"] if r["id"] == run_id)
    assert (listed["current_step"], listed["pending_approvals"]) == ("ask", 0)

    api.post(f"/runs/{run_id}/questions/{question['id']}/answer", json={"answer": "eu-west"})
    run = waiting_on(api, run_id, "approval")
    assert run["pending_approvals"] == 1 and run["questions"] == []
    [approval] = run["approvals"]
    assert approval["prompt"] == "Ship to eu-west?" and approval["status"] == "pending"
    answered = {q["id"]: q["status"] for q in api.get("/questions?status=answered").get_json()["questions"]}
    assert answered[question["id"]] == "answered"
    assert question["id"] not in {q["id"] for q in api.get("/questions?status=pending").get_json()["questions"]}

    api.post(f"/runs/{run_id}/approvals/{approval['id']}/approve", json={"comment": "ok"})
    assert wait_run(api, run_id)["status"] == "succeeded"
    decided = {a["id"]: a["status"] for a in api.get("/approvals?status=decided").get_json()["approvals"]}
    assert decided[approval["id"]] == "approved"
    assert approval["id"] not in {a["id"] for a in api.get("/approvals").get_json()["approvals"]}
    for path in ("/approvals?status=open", "/questions?status=open", "/questions?status=decided"):
        response = api.get(path)
        assert response.status_code == 400 and response.get_json()["error"]["details"]["field"] == "status"


def test_an_unknown_action_is_a_404_listing_the_valid_ones(api):
    run_id = wait_run(api, start(api, publish(api, {"name": "one", "steps": [
        {"id": "a", "type": "tool", "tool": "echo", "args": {}}]})))["id"]
    response = api.post(f"/runs/{run_id}/frobnicate")
    body = response.get_json()
    assert response.status_code == 404 and body["error"]["code"] == "not_found"
    assert body["error"]["details"]["valid_actions"] == ["pause", "resume", "cancel", "retry", "rerun", "fork"]
    assert "frobnicate" in body["error"]["message"]
    decision = api.post(f"/runs/{run_id}/approvals/apr_x/sideways").get_json()
    assert decision["error"]["details"]["valid_actions"] == ["approve", "reject", "request_changes"]
    plain = api.get("/nothing-here").get_json()
    assert plain["error"]["code"] == "not_found" and "valid_actions" not in plain["error"]["details"]
