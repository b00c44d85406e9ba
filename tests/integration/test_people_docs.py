"""The examples of docs/people.md, read from the document and run through real workers: an approval with a
round of request_changes, then approved; and a run that waits on an event, a question and a timer."""

from __future__ import annotations

import json

import pytest

from tests.integration.conftest import ROOT, by_id, events, publish, start, wait_for, wait_run

pytestmark = pytest.mark.usefixtures("engine_processes")

DOC = (ROOT / "docs" / "people.md").read_text()
EXAMPLES = {example["name"]: example for example in (
    json.loads(block.split("```", 1)[0]) for block in DOC.split("```json workflow")[1:])}


def test_the_page_has_its_examples():
    assert set(EXAMPLES) == {"answer a ticket", "ship an order"}


def waiting_on(api, run_id: str, what: str) -> dict:
    return wait_for(lambda: (run := api.get(f"/runs/{run_id}").get_json())["waiting_on"] == what and run,
                    60, f"run {run_id} to wait on {what}")


def test_request_changes_runs_the_draft_again_with_the_comment_then_approve(api):
    run_id = start(api, publish(api, EXAMPLES["answer a ticket"]), {"ticket": "My invoice is wrong"})
    run = waiting_on(api, run_id, "approval")
    assert run["pending_approvals"] == 1
    (first,) = run["approvals"]
    assert (first["round"], first["status"]) == (1, "pending")
    assert first["prompt"] == "Send this reply? Reply to: My invoice is wrong"
    inbox = api.get("/approvals?status=pending").get_json()["approvals"]
    assert first["id"] in [a["id"] for a in inbox]

    asked = api.post(f"/runs/{run_id}/approvals/{first['id']}/request_changes?triggered_by=ada",
                     json={"comment": "shorter, please"})
    assert asked.status_code == 200, asked.get_json()
    again = wait_for(lambda: (r := api.get(f"/runs/{run_id}").get_json())["approvals"]
                     and r["approvals"][0]["id"] != first["id"] and r, 60, "the second round")
    (second,) = again["approvals"]
    assert second["round"] == 2
    assert second["prompt"] == "Send this reply? Reply to: My invoice is wrong (reviewer: shorter, please)"
    assert by_id(again)["draft"]["attempt"] == 2  # the draft ran again
    decided = api.get("/approvals?status=changes_requested").get_json()["approvals"]
    assert [(a["decided_by"], a["comment"]) for a in decided if a["id"] == first["id"]] == [("ada", "shorter, please")]
    twice = api.post(f"/runs/{run_id}/approvals/{first['id']}/approve")
    assert twice.status_code == 409 and twice.get_json()["error"]["code"] == "invalid_transition"

    assert api.post(f"/runs/{run_id}/approvals/{second['id']}/approve?triggered_by=ada").status_code == 200
    done = wait_run(api, run_id)
    assert done["status"] == "succeeded", done
    steps = by_id(done)
    assert steps["review"]["output"] == {"approved": True, "comment": None, "decided_by": "ada", "round": 2}
    assert steps["send"]["output"] == {"reply": "Reply to: My invoice is wrong (reviewer: shorter, please)",
                                       "approved_by": "ada"}
    reopened = [e for e in events(api, run_id) if e["type"] == "steps_reopened"]
    assert [e["data"]["steps"] for e in reopened] == [["draft", "review"]]


def test_a_reject_fails_the_run_with_approval_rejected(api):
    run_id = start(api, publish(api, EXAMPLES["answer a ticket"]), {"ticket": "Spam"})
    (approval,) = waiting_on(api, run_id, "approval")["approvals"]
    api.post(f"/runs/{run_id}/approvals/{approval['id']}/reject", json={"comment": "do not answer spam"})
    run = wait_run(api, run_id)
    assert (run["status"], run["error"]["code"]) == ("failed", "approval_rejected"), run
    assert by_id(run)["send"]["status"] == "skipped"


def test_an_order_waits_on_its_payment_a_question_and_a_timer(api):
    run_id = start(api, publish(api, EXAMPLES["ship an order"]), {"order_id": "42"})
    waiting_on(api, run_id, "event")
    sent = api.post("/events", json={"name": "payment.received", "correlation_key": "order-42",
                                     "payload": {"amount": 120}})
    assert sent.status_code == 202 and {"run_id": run_id, "step_id": "paid"} in sent.get_json()["delivered_to"]

    run = waiting_on(api, run_id, "question")
    (question,) = run["questions"]
    assert (question["question"], question["status"]) == ("Which carrier for order 42 (120 EUR)?", "pending")
    assert by_id(run)["paid"]["output"]["payload"] == {"amount": 120}
    answered = api.post(f"/runs/{run_id}/questions/{question['id']}/answer", json={"answer": "DHL"})
    assert answered.status_code == 200, answered.get_json()

    waiting_on(api, run_id, "timer")
    done = wait_run(api, run_id, timeout=60)
    assert done["status"] == "succeeded", done
    steps = by_id(done)
    assert steps["carrier"]["output"] == {"answer": "DHL"} and steps["cool_off"]["output"] == {"fired": True}
    assert steps["ship"]["output"] == {"order": "42", "carrier": "DHL"}


def test_an_event_sent_before_its_step_waits_is_kept_for_it(api):
    sent = api.post("/events", json={"name": "payment.received", "correlation_key": "order-7",
                                     "payload": {"amount": 9}})
    assert sent.status_code == 202
    run_id = start(api, publish(api, EXAMPLES["ship an order"]), {"order_id": "7"})
    run = waiting_on(api, run_id, "question")
    assert by_id(run)["paid"]["output"]["payload"] == {"amount": 9}
