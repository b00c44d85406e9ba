"""Control flow through real workers and the scheduler: a condition picks a branch, the other is
skipped with its reason, a step that may fail lets the run go on, and join rules decide the rest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.conftest import ROOT, by_id, events, publish, start, wait_run

pytestmark = pytest.mark.usefixtures("engine_processes")

def _example(doc: Path, heading: str) -> dict:
    """The first JSON block under ``heading`` in ``doc``."""
    text = doc.read_text().split(heading, 1)[1]
    return json.loads(text.split("```json", 1)[1].split("```", 1)[0])


# The example of docs/api.md ("Control flow"), read from the document: what it shows is what runs.
ROUTED = _example(ROOT / "docs" / "api.md", "## Control flow")


@pytest.mark.parametrize(("category", "ran", "skipped"), [("refund", "refund", "other"), ("billing", "other", "refund")])
def test_a_condition_routes_the_run_and_a_failure_that_may_happen_does_not_fail_it(api, category, ran, skipped):
    run_id = start(api, publish(api, ROUTED), {"category": category})
    run = wait_run(api, run_id)
    steps = by_id(run)
    assert run["status"] == "succeeded", run
    assert steps[ran]["status"] == "succeeded"
    assert (steps[skipped]["status"], steps[skipped]["skipped_reason"]) == ("skipped", "condition")
    assert steps["notify"]["status"] == "failed" and steps["notify"]["error"]["message"] == "smtp down"
    assert steps["done"]["status"] == "succeeded"
    assert run["failed_steps"] == ["notify"]
    assert run["output"] == {"done": {"text": "done"}}
    skips = [e for e in events(api, run_id) if e["type"] == "step_completed" and e["data"].get("skipped")]
    assert [(e["step_id"], e["data"]["reason"]) for e in skips] == [(skipped, "condition")]


def test_a_condition_naming_a_step_that_is_not_upstream_is_refused_at_publish(api):
    response = api.put("/workflows/bad-condition", json={"name": "bad", "steps": [
        {"id": "a", "type": "tool", "tool": "echo"},
        {"id": "b", "type": "tool", "tool": "echo", "when": "steps.a.output.ok"},
    ]})
    assert response.status_code == 400
    problems = response.get_json()["error"]["details"]["problems"]
    assert problems == ["steps.1.when: names step 'a', which is not upstream of this step "
                        "(add it to needs, directly or through another step)"]


# A branch taken, a branch skipped, and a join after them under each rule: all_succeeded is skipped
# (upstream_skipped, and the run still succeeds: a skip is not a failure); any_succeeded and all_done run.
@pytest.mark.parametrize(("join", "status", "reason"), [("all_succeeded", "skipped", "upstream_skipped"),
                                                        ("any_succeeded", "succeeded", None),
                                                        ("all_done", "succeeded", None)])
def test_a_join_after_a_branch_taken_and_a_branch_skipped(api, join, status, reason):
    definition = {"name": f"join_{join}", "steps": [
        {"id": "pick", "type": "tool", "tool": "echo", "args": {"side": "{{ input.side }}"}},
        {"id": "left", "type": "tool", "tool": "echo", "args": {"text": "l"}, "needs": ["pick"],
         "when": "steps.pick.output.side == 'left'"},
        {"id": "right", "type": "tool", "tool": "echo", "args": {"text": "r"}, "needs": ["pick"],
         "when": "steps.pick.output.side == 'right'"},
        {"id": "joined", "type": "tool", "tool": "echo", "args": {"text": "j"}, "needs": ["left", "right"], "join": join},
    ]}
    run_id = start(api, publish(api, definition), {"side": "left"})
    run = wait_run(api, run_id)
    steps = by_id(run)
    assert run["status"] == "succeeded", run
    assert (steps["left"]["status"], steps["right"]["status"], steps["right"]["skipped_reason"]) == (
        "succeeded", "skipped", "condition")
    assert (steps["joined"]["status"], steps["joined"].get("skipped_reason")) == (status, reason)
    started = {e["step_id"] for e in events(api, run_id) if e["type"] == "step_started"}
    assert ("joined" in started) is (status == "succeeded") and "right" not in started
