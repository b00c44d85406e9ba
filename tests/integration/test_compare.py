"""GET /runs/{id}/compare/{other_id} on runs the real workers ran: two runs of one workflow whose inputs
differ diverge first at the step that reads the input, in graph order (not definition order); equal
runs do not diverge; a run of another tenant is a 404."""

from __future__ import annotations

import pytest

from tests.integration.conftest import publish, start, wait_run

pytestmark = pytest.mark.usefixtures("engine_processes")


def branching(api) -> str:
    """Listed out of graph order: 'late' reads the input but runs after 'early', which does not."""
    return publish(api, {"name": "branches", "steps": [
        {"id": "late", "type": "tool", "tool": "echo", "needs": ["early"], "args": {"who": "{{ input.who }}"}},
        {"id": "early", "type": "tool", "tool": "echo", "args": {"fixed": 1}},
        {"id": "after", "type": "tool", "tool": "echo", "needs": ["late"], "args": {"from": "{{ steps.late.output }}"}},
    ]})


def test_two_runs_diverge_first_at_the_step_that_reads_the_changed_input(api):
    workflow = branching(api)
    ada = wait_run(api, start(api, workflow, {"who": "ada"}))
    bob = wait_run(api, start(api, workflow, {"who": "bob"}))
    body = api.get(f"/runs/{ada['id']}/compare/{bob['id']}").get_json()
    assert [s["step_id"] for s in body["steps"]] == ["early", "late", "after"]
    assert body["first_divergence"] == "late"
    steps = {s["step_id"]: s for s in body["steps"]}
    assert not steps["early"]["input_changed"] and not steps["early"]["output_changed"]
    assert steps["late"]["input_changed"] and steps["late"]["output_diff"] == [
        {"op": "replace", "path": "/who", "value": "bob"}]
    assert steps["after"]["input_changed"]  # what it needs changed
    for side in ("run", "other"):
        assert steps["late"][side]["status"] == "succeeded" and steps["late"][side]["attempts"] == 1
        assert steps["late"][side]["duration_s"] >= 0 and steps["late"][side]["credits"] > 0
    assert (body["run"]["id"], body["other"]["id"]) == (ada["id"], bob["id"])

    same = wait_run(api, start(api, workflow, {"who": "ada"}))
    assert api.get(f"/runs/{ada['id']}/compare/{same['id']}").get_json()["first_divergence"] is None


def test_a_run_of_another_tenant_cannot_be_compared(api, tokens):
    workflow = branching(api)
    mine = wait_run(api, start(api, workflow, {"who": "ada"}))["id"]
    other = api.as_(tokens["other_tenant"])
    theirs = wait_run(other, start(other, publish(other, {"name": "x", "steps": [
        {"id": "early", "type": "tool", "tool": "echo", "args": {}}]})))["id"]
    for path in (f"/runs/{mine}/compare/{theirs}", f"/runs/{theirs}/compare/{mine}", f"/runs/{mine}/compare/run_nope"):
        response = api.get(path)
        assert response.status_code == 404 and response.get_json()["error"]["code"] == "not_found"
    assert api.as_(tokens["viewer"]).get(f"/runs/{mine}/compare/{mine}").status_code == 200


def test_the_web_ui_compares_two_ticked_runs_and_acts_on_several(app, api, tokens):
    from tests.integration.conftest import signed_in, wait_for

    workflow = branching(api)
    ada = wait_run(api, start(api, workflow, {"who": "ada"}))["id"]
    bob = wait_run(api, start(api, workflow, {"who": "bob"}))["id"]
    ui = signed_in(app, tokens["operator"])
    listing = ui.client.get(f"/runs?workflow_id={workflow}").get_data(as_text=True)
    assert f'name="run_id" value="{ada}"' in listing and 'value="compare"' in listing

    picked = ui.post("/runs/selected", {"run_id": [ada, bob], "action": "compare"})
    assert picked.status_code == 302 and picked.headers["Location"].endswith(f"/runs/{ada}/compare/{bob}")
    page = ui.client.get(f"/runs/{ada}/compare/{bob}")
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and 'First divergence: <a href="#step-late"><strong>late</strong>' in html
    assert 'id="step-late" class="diverges"' in html and "/who" in html
    one = ui.post("/runs/selected", {"run_id": [ada], "action": "compare"})
    assert one.status_code == 302 and "exactly two" in ui.client.get("/runs").get_data(as_text=True)

    sleeper = publish(api, {"name": "sleeps", "steps": [
        {"id": "nap", "type": "tool", "tool": "sleep", "args": {"seconds": 30}}]})
    running = start(api, sleeper)
    done = ui.post("/runs/selected", {"run_id": [running, ada], "action": "cancel", "back": "/runs"})
    assert done.status_code == 302
    assert "cancel: applied to 1 of 2." in ui.client.get("/runs").get_data(as_text=True)
    wait_for(lambda: api.get(f"/runs/{running}").get_json()["status"] == "cancelled", 30, "the cancel")
