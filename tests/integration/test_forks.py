"""Forks through the real API, workers and scheduler: a failed 5-step run forked from its 4th step with a
new model and prompt runs only steps 4 and 5 (its events name no other step, its usage counts only
them, the fake OpenAI server sees one call), keeps steps 1-3's outputs, and the comparison of the two
runs names step 4 as the first divergence."""

from __future__ import annotations

import json
import re

import pytest

from tests.integration.conftest import ROOT, by_id, events, publish, signed_in, start, wait_for, wait_run

pytestmark = pytest.mark.usefixtures("engine_processes")


def five_steps() -> dict:
    """s1 -> s2 -> s3 (a model call) -> s4 (a model call the endpoint refuses) -> s5."""
    return {"name": "fork me", "input_schema": {"type": "object", "required": ["topic"]}, "steps": [
        {"id": "s1", "type": "tool", "tool": "echo", "args": {"text": "{{ input.topic }}"}},
        {"id": "s2", "type": "tool", "tool": "echo", "needs": ["s1"], "args": {"text": "{{ steps.s1.output.text }}!"}},
        {"id": "s3", "type": "llm", "needs": ["s2"], "model": "openai/gpt-4o-mini",
         "prompt": "Outline {{ steps.s2.output.text }}"},
        {"id": "s4", "type": "llm", "needs": ["s3"], "model": "openai/leaky", "retry": {"max_attempts": 1},
         "prompt": "Summarise {{ steps.s3.output.text }}"},
        {"id": "s5", "type": "tool", "tool": "echo", "needs": ["s4"], "args": {"text": "{{ steps.s4.output.text }}"}},
    ]}


def test_a_fork_from_the_fourth_step_runs_only_the_fourth_and_fifth(api, app, tokens, fake_llm):
    workflow = publish(api, five_steps())
    original = wait_run(api, start(api, workflow, {"topic": "tides"}))
    assert original["status"] == "failed", original
    assert {s["id"]: s["status"] for s in original["steps"]} == {
        "s1": "succeeded", "s2": "succeeded", "s3": "succeeded", "s4": "failed", "s5": "skipped"}
    calls_before = len(fake_llm.requests)

    response = api.post(f"/runs/{original['id']}/fork", json={
        "from_step": "s4",
        "steps": {"s4": {"model": "openai/gpt-4o-mini", "prompt": "Summarise briefly: {{ steps.s3.output.text }}"}},
    })
    assert response.status_code == 201, response.get_json()
    forked = response.get_json()
    assert forked["forked_from"] == {"run_id": original["id"], "step_id": "s4"}
    assert forked["trigger_type"] == "fork"
    done = wait_run(api, forked["id"])
    assert done["status"] == "succeeded", done

    steps, before = by_id(done), by_id(original)
    for step_id in ("s1", "s2", "s3"):
        assert steps[step_id]["reused"] and steps[step_id]["status"] == "succeeded"
        assert steps[step_id]["output"] == before[step_id]["output"]
        assert steps[step_id]["attempt"] == 0 and steps[step_id]["usage"] is None
    assert [steps[s]["reused"] for s in ("s4", "s5")] == [False, False]
    assert steps["s5"]["output"]["text"].startswith("fake answer to: Summarise briefly:")

    # The log proves s1-s3 did not run: no event of the fork names them.
    log = events(api, done["id"])
    assert {e["step_id"] for e in log if e["step_id"]} == {"s4", "s5"}
    assert log[0]["type"] == "run_created" and sorted(log[0]["data"]["reused"]) == ["s1", "s2", "s3"]
    # Usage: two steps, one model call (the fake's token counts), nothing for the reused steps.
    assert {k: done["usage"][k] for k in ("steps", "llm_calls", "tool_calls", "tokens_in", "tokens_out")} == {
        "steps": 2, "llm_calls": 1, "tool_calls": 1, "tokens_in": 11, "tokens_out": 7}
    new_calls = fake_llm.requests[calls_before:]
    assert len(new_calls) == 1 and "Summarise briefly" in new_calls[0]["body"]["messages"][-1]["content"]

    # The overridden definition is a version of its own, readable but never listed nor the latest.
    number = done["workflow"]["version"]
    assert number < 0
    stored = api.get(f"/workflows/{workflow}/versions/{number}").get_json()
    assert stored["definition"]["steps"][3]["model"] == "openai/gpt-4o-mini"
    listed = api.get(f"/workflows/{workflow}").get_json()
    assert [v["version"] for v in listed["versions"]] == [1] and listed["version"] == 1
    page = signed_in(app, tokens["viewer"]).client.get(f"/runs/{done['id']}")
    assert page.status_code == 200 and "Summarise briefly" in page.get_data(as_text=True)

    comparison = api.get(f"/runs/{original['id']}/compare/{done['id']}").get_json()
    assert comparison["first_divergence"] == "s4"
    compared = {s["step_id"]: s for s in comparison["steps"]}
    assert [s["step_id"] for s in comparison["steps"]] == ["s1", "s2", "s3", "s4", "s5"]
    assert not any(compared[s]["input_changed"] or compared[s]["output_changed"] for s in ("s1", "s2", "s3"))
    assert compared["s4"]["input_changed"] and compared["s4"]["run"]["status"] == "failed"
    assert compared["s4"]["other"]["status"] == "succeeded" and compared["s4"]["other"]["tokens_out"] == 7
    assert compared["s3"]["other"]["reused"] and compared["s3"]["other"]["credits"] == 0
    assert compared["s5"]["output_diff"] == [{"op": "replace", "path": "", "value": steps["s5"]["output"]}]


def test_a_fork_with_a_new_input_reruns_what_reads_it_and_refuses_bad_requests(api):
    workflow = publish(api, five_steps())
    original = wait_run(api, start(api, workflow, {"topic": "tides"}))
    run_id = original["id"]
    refused = {
        "from_step": api.post(f"/runs/{run_id}/fork", json={"from_step": "nope"}),
        "input": api.post(f"/runs/{run_id}/fork", json={"from_step": "s1", "input": {"no": "topic"}}),
        "steps.s4": api.post(f"/runs/{run_id}/fork", json={"from_step": "s4", "steps": {"s4": {"model": 5}}}),
        "steps.s2": api.post(f"/runs/{run_id}/fork", json={"from_step": "s4", "steps": {"s2": {"args": {}}}}),
    }
    for field, response in refused.items():
        body = response.get_json()
        assert response.status_code == 400 and body["error"]["code"] == "invalid_request", (field, body)
        assert field in body["error"]["message"]
    assert api.post("/runs/run_nope/fork", json={"from_step": "s1"}).status_code == 404

    patched = api.post(f"/runs/{run_id}/fork", json={"from_step": "s1", "input_patch": {"topic": "waves"}})
    assert patched.status_code == 201, patched.get_json()
    fork = wait_run(api, patched.get_json()["id"])
    assert fork["input"] == {"topic": "waves"} and not any(s["reused"] for s in fork["steps"])
    assert by_id(fork)["s1"]["output"] == {"text": "waves"}


def test_a_run_still_going_cannot_be_forked(api):
    workflow = publish(api, {"name": "slow", "steps": [{"id": "nap", "type": "tool", "tool": "sleep",
                                                         "args": {"seconds": 30}}]})
    run_id = start(api, workflow)
    response = api.post(f"/runs/{run_id}/fork", json={"from_step": "nap"})
    assert response.status_code == 409, response.get_json()
    assert response.get_json()["error"]["details"]["allowed_from"] == ["cancelled", "failed", "succeeded"]
    api.post(f"/runs/{run_id}/cancel")


def _json_blocks(heading: str) -> list:
    """The JSON blocks of docs/forks.md under ``heading`` (up to the next heading of its level)."""
    text = (ROOT / "docs" / "forks.md").read_text().split(heading + "\n", 1)[1]
    depth = len(heading.split(" ")[0])
    text = re.split(rf"\n#{{1,{depth}}} ", text)[0]
    return [json.loads(block.split("```", 1)[0]) for block in text.split("```json\n")[1:]]


def test_the_example_of_docs_forks_md_runs_as_it_says(api):
    definition, fork_body = _json_blocks("### Example")
    [bulk_body] = _json_blocks("## Bulk actions")
    workflow = publish(api, definition)
    runs = [wait_run(api, start(api, workflow, {"customer": f"c{i}@example.com", "ticket": "refund?"}))
            for i in range(3)]
    assert {r["status"] for r in runs} == {"failed"} and runs[0]["error"]["step_id"] == "send"

    response = api.post(f"/runs/{runs[0]['id']}/fork", json=fork_body)
    assert response.status_code == 201, response.get_json()
    fork = wait_run(api, response.get_json()["id"])
    steps = by_id(fork)
    assert fork["status"] == "succeeded" and fork["input"]["priority"] == "high"
    assert [s for s in ("fetch", "draft", "send", "log") if steps[s]["reused"]] == ["fetch", "draft"]
    assert steps["send"]["output"] == {"to": "c0@example.com", "text": by_id(runs[0])["draft"]["output"]["text"]}
    assert fork["usage"]["steps"] == 2 and fork["usage"]["llm_calls"] == 0
    assert api.get(f"/runs/{runs[0]['id']}/compare/{fork['id']}").get_json()["first_divergence"] == "send"

    bulk_body["filter"]["workflow_id"] = workflow
    dry = api.post("/runs/bulk/fork", json=bulk_body).get_json()
    assert (dry["matched"], dry["applied"], dry["skipped"]) == (3, 0, []) and len(dry["runs"]) == 3
    applied = api.post("/runs/bulk/fork", json={**bulk_body, "dry_run": False}).get_json()
    assert applied["applied"] == 3
    assert {wait_run(api, r)["status"] for r in applied["runs"]} == {"succeeded"}
    assert api.post("/runs/bulk/fork", json=bulk_body).get_json()["matched"] == 3  # the originals only


def test_a_reused_step_that_runs_again_is_no_longer_reused(api):
    """request_changes on a fork's approval reopens the step before it, which the fork had reused."""
    workflow = publish(api, {"name": "review", "steps": [
        {"id": "draft", "type": "tool", "tool": "echo", "args": {"text": "draft"}},
        {"id": "review", "type": "approval", "needs": ["draft"], "prompt": "ok?"},
    ]})
    original = start(api, workflow)
    wait_for(lambda: api.get(f"/runs/{original}").get_json()["waiting_on"] == "approval", 30, "the approval")
    api.post(f"/runs/{original}/cancel")
    assert wait_run(api, original)["status"] == "cancelled"
    fork_id = api.post(f"/runs/{original}/fork", json={"from_step": "review"}).get_json()["id"]

    def waiting_with_approval(round_: int):
        run = api.get(f"/runs/{fork_id}").get_json()
        return run if run["approvals"] and run["approvals"][0]["round"] == round_ else None

    run = wait_for(lambda: waiting_with_approval(1), 30, "the fork to ask for approval")
    assert by_id(run)["draft"]["reused"] is True
    api.post(f"/runs/{fork_id}/approvals/{run['approvals'][0]['id']}/request_changes", json={"comment": "again"})
    run = wait_for(lambda: waiting_with_approval(2), 30, "the fork to ask again")
    assert by_id(run)["draft"]["reused"] is False and by_id(run)["draft"]["attempt"] == 1
    api.post(f"/runs/{fork_id}/cancel")
