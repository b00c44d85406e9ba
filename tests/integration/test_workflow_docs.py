"""The examples of docs/workflows.md, read from the document and run through real workers: what the
reference shows is what runs."""

from __future__ import annotations

import json

import pytest

from tests.integration.conftest import ROOT, by_id, publish, start, wait_run

pytestmark = pytest.mark.usefixtures("engine_processes")

DOC = (ROOT / "docs" / "workflows.md").read_text()
EXAMPLES = {example["name"]: example for example in (
    json.loads(block.split("```", 1)[0]) for block in DOC.split("```json workflow")[1:])}


def test_the_reference_has_its_examples():
    assert set(EXAMPLES) == {"route a ticket", "summarise documents", "research", "write a report",
                             "answer a customer", "research topics"}


@pytest.mark.parametrize(("category", "ran", "skipped"), [("refund", "refund", "answer"), ("billing", "answer", "refund")])
def test_route_a_ticket(api, category, ran, skipped):
    run = wait_run(api, start(api, publish(api, EXAMPLES["route a ticket"]), {"category": category}))
    steps = by_id(run)
    assert run["status"] == "succeeded" and run["failed_steps"] == ["notify"], run
    assert steps[ran]["status"] == "succeeded"
    assert (steps[skipped]["status"], steps[skipped]["skipped_reason"]) == ("skipped", "condition")
    assert steps["close"]["output"] == {"text": "closed"}


def test_summarise_each_document(api):
    documents = [{"text": f"document {n}"} for n in range(5)]
    run = wait_run(api, start(api, publish(api, EXAMPLES["summarise documents"]), {"documents": documents}))
    assert run["status"] == "succeeded", run
    steps = by_id(run)
    assert steps["summarise"]["items"]["succeeded"] == 5
    assert len(steps["summarise"]["output"]) == 5 and "document 2" in json.dumps(steps["summarise"]["output"][2])
    assert steps["digest"]["output"] == {"summaries": 5}


def test_a_research_sub_workflow_called_from_two_workflows(api):
    publish(api, EXAMPLES["research"], "research")
    report = wait_run(api, start(api, publish(api, EXAMPLES["write a report"]), {"subject": "tides"}))
    answer = wait_run(api, start(api, publish(api, EXAMPLES["answer a customer"]), {"question": "refunds"}))
    for run, topic in ((report, "tides"), (answer, "refunds")):
        assert run["status"] == "succeeded", run
        child = api.get(f"/runs/{run['children'][0]}").get_json()
        assert (child["workflow"]["id"], child["parent_run_id"], child["input"]) == ("research", run["id"],
                                                                                  {"topic": topic})
        assert by_id(run)["research"]["output"] == child["output"] and topic in json.dumps(child["output"])
    assert "tides" in json.dumps(by_id(report)["draft"]["output"])


def test_a_map_over_child_runs_of_the_research_sub_workflow(api):
    publish(api, EXAMPLES["research"], "research")
    topics = ["tides", "winds", "ice"]
    run = wait_run(api, start(api, publish(api, EXAMPLES["research topics"]), {"topics": topics}))
    assert run["status"] == "succeeded", run
    step = by_id(run)["research"]
    assert step["items"]["succeeded"] == 3 and by_id(run)["compare"]["output"] == {"researched": 3}
    children = [api.get(f"/runs/{child_id}").get_json() for child_id in run["children"]]
    by_item = {child["parent_step_id"]: child for child in children}
    assert sorted(by_item) == ["research[0]", "research[1]", "research[2]"]
    for index, topic in enumerate(topics):
        child = by_item[f"research[{index}]"]
        assert child["input"] == {"topic": topic, "rank": index + 1}
        assert step["output"][index] == child["output"] and topic in json.dumps(child["output"])
