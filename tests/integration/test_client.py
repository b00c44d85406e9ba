"""switchyard.client against the real API (served over HTTP) and real workers: sync and async,
errors as exceptions, pagination, follow, wait — and its models against the served OpenAPI document."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from switchyard.client import (
    AsyncClient,
    Client,
    Forbidden,
    InvalidTransition,
    NotFound,
    Unauthorized,
    Unreachable,
    ValidationFailed,
    WaitTimeout,
    models,
)
from tests.integration.conftest import served, unique

pytestmark = pytest.mark.usefixtures("engine_processes")

CHAIN = {
    "name": "Client chain",
    "input_schema": {"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}},
    "steps": [
        {"id": "first", "type": "tool", "tool": "echo", "args": {"text": "{{ input.text }}"}},
        {"id": "second", "type": "tool", "tool": "echo", "needs": ["first"],
         "args": {"text": "{{ steps.first.output.text }}!"}},
    ],
}
FAILING = {"name": "Client failing", "steps": [
    {"id": "boom", "type": "tool", "tool": "fail", "args": {"message": "it broke"}, "retry": {"max_attempts": 1}},
]}


@pytest.fixture(scope="module")
def url(settings) -> Iterator[str]:
    from api import create_app

    with served(create_app(settings.model_copy(update={"stream_keepalive_s": 0.5}))) as base:
        yield base


@pytest.fixture
def client(url, tokens) -> Iterator[Client]:
    with Client(url, tokens["admin"]) as c:
        yield c


def test_a_run_started_waited_for_and_read_through_the_client(client):
    workflow_id = unique("client")
    published = client.workflows.publish(workflow_id, CHAIN)
    assert (published.id, published.version) == (workflow_id, 1)
    assert workflow_id in [w.id for w in client.workflows.list()]
    assert client.workflows.get(workflow_id).definition["name"] == "Client chain"

    run = client.runs.start(workflow_id, {"text": "hi"})
    assert isinstance(run, models.Run) and run.workflow.id == workflow_id
    done = run.wait(timeout=60)
    assert done.status == "succeeded" and done.ended
    assert done.step("second").output == {"text": "hi!"}
    assert client.runs.context(run.id).steps["first"]["output"] == {"text": "hi"}
    log = list(client.runs.events(run.id))
    assert [e.seq for e in log] == sorted(e.seq for e in log) and log[-1].type == "run_succeeded"
    assert [e.seq for e in client.runs.events(run.id, after=log[1].seq)] == [e.seq for e in log[2:]]


def test_every_refusal_is_its_own_exception_with_the_apis_code_message_and_details(client, url, tokens):
    with pytest.raises(NotFound) as missing:
        client.runs.get("run_doesnotexist")
    assert (missing.value.status, missing.value.code) == (404, "not_found") and "run_doesnotexist" in missing.value.message

    workflow_id = unique("client")
    client.workflows.publish(workflow_id, CHAIN)
    with pytest.raises(ValidationFailed) as invalid:
        client.runs.start(workflow_id, {"text": 5})
    assert invalid.value.status == 400 and invalid.value.code == "invalid_request"

    done = client.runs.start(workflow_id, {"text": "x"}).wait(timeout=60)
    with pytest.raises(InvalidTransition) as wrong:
        client.runs.pause(done.id)
    assert wrong.value.status == 409 and wrong.value.details["status"] == "succeeded"
    assert "running" in wrong.value.details["allowed_from"]

    with Client(url, "sy_not-a-token") as stranger, pytest.raises(Unauthorized):
        stranger.workflows.list()
    with Client(url, tokens["viewer"]) as viewer, pytest.raises(Forbidden):
        viewer.runs.start(workflow_id, {"text": "x"})
    with Client("http://127.0.0.1:9", tokens["admin"], timeout=2) as nowhere, pytest.raises(Unreachable):
        nowhere.workflows.list()


def test_a_steps_error_reaches_the_client_with_its_details(client):
    """A step failing with invalid_arguments raises nothing (no request was refused): its error, and the
    failed run's naming it, carry the details the check gave (the tool, the field, the problems)."""
    workflow_id = unique("client")
    client.workflows.publish(workflow_id, {"name": "sleepy", "steps": [
        {"id": "nap", "type": "tool", "tool": "sleep", "args": {"seconds": "{{ input.seconds }}"}}]})
    done = client.runs.start(workflow_id, {"seconds": "five"}).wait(timeout=60)
    error = done.step("nap").error
    assert isinstance(error, models.StepError) and (error.code, error.retryable) == ("invalid_arguments", False)
    assert error.details == {"tool": "sleep", "field": "seconds",
                             "problems": ["seconds: the tool 'sleep' takes a number here, got \"five\""]}
    assert (done.error.code, done.error.step_id, done.error.details) == ("invalid_arguments", "nap", error.details)


def test_wait_gives_up_at_its_deadline_with_the_run_as_last_read(client):
    workflow_id = unique("client")
    client.workflows.publish(workflow_id, {"name": "slow", "steps": [
        {"id": "nap", "type": "tool", "tool": "sleep", "args": {"seconds": 5}}]})
    run = client.runs.start(workflow_id)
    with pytest.raises(WaitTimeout) as late:
        client.runs.wait(run.id, timeout=0.5)
    assert late.value.run.id == run.id and not late.value.run.ended
    assert client.runs.cancel(run.id, reason="test over").status == "cancelled"


def test_list_iterates_over_every_page_newest_first(client):
    workflow_id = unique("client")
    client.workflows.publish(workflow_id, CHAIN)
    started = [client.runs.start(workflow_id, {"text": str(i)}).id for i in range(7)]
    page = client.runs.page(workflow_id=workflow_id, limit=3)
    assert len(page.runs) == 3 and page.next_cursor
    listed = [r.id for r in client.runs.list(workflow_id=workflow_id, page_size=3)]
    assert listed == started[::-1]
    assert all(r.status in models.TERMINAL_RUN for r in client.runs.list(workflow_id=workflow_id, status="succeeded"))


def test_follow_yields_the_live_events_in_order_and_ends_with_the_run(client):
    workflow_id = unique("client")
    client.workflows.publish(workflow_id, CHAIN)
    run = client.runs.start(workflow_id, {"text": "live"})
    followed = list(client.runs.follow(run.id))
    assert followed[-1].type == "run_succeeded"
    assert [e.seq for e in followed] == [e.seq for e in client.runs.events(run.id)]
    assert [e.seq for e in client.runs.follow(run.id, after=followed[2].seq)] == [e.seq for e in followed[3:]]


def test_the_async_client_does_the_same(url, tokens):
    async def scenario():
        async with AsyncClient(url, tokens["admin"]) as client:
            workflow_id = unique("aclient")
            await client.workflows.publish(workflow_id, CHAIN)
            started = [(await client.runs.start(workflow_id, {"text": str(i)})).id for i in range(4)]
            followed = [e async for e in client.runs.follow(started[-1])]
            done = await (await client.runs.get(started[0])).wait(timeout=60)
            listed = [r.id async for r in client.runs.list(workflow_id=workflow_id, page_size=2)]
            with pytest.raises(NotFound):
                await client.runs.get("run_nope")
            failing = unique("aclient")
            await client.workflows.publish(failing, FAILING)
            failed = await client.runs.wait((await client.runs.start(failing)).id, timeout=60)
            return followed, done, listed, started, failed

    followed, done, listed, started, failed = asyncio.run(scenario())
    assert followed[-1].type == "run_succeeded" and done.status == "succeeded"
    assert listed == started[::-1]
    assert failed.status == "failed" and failed.step("boom").error.message == "it broke"


def test_a_for_each_steps_items_page_by_page(client):
    workflow_id = unique("client")
    client.workflows.publish(workflow_id, {"name": "each", "steps": [
        {"id": "each", "type": "tool", "tool": "echo", "for_each": "input.things", "args": {"text": "{{ item }}"}}]})
    run = client.runs.start(workflow_id, {"things": ["a", "b", "c", "d", "e"]}).wait(timeout=60)
    assert run.status == "succeeded" and run.step("each").items.succeeded == 5
    items = list(client.runs.items(run.id, "each", page_size=2))
    assert [(i.index, i.output) for i in items] == [(n, {"text": t}) for n, t in enumerate("abcde")]


def test_fork_compare_and_bulk_through_the_client(client):
    workflow_id = unique("client")
    client.workflows.publish(workflow_id, CHAIN)
    original = client.runs.start(workflow_id, {"text": "hi"}).wait(timeout=60)
    fork = client.runs.fork(original.id, "second", input_patch={"text": "patched"}).wait(timeout=60)
    assert fork.status == "succeeded" and fork.forked_from == models.ForkedFrom(run_id=original.id, step_id="second")
    assert (fork.step("first").reused, fork.step("second").reused) == (True, False)
    assert fork.input == {"text": "patched"} and fork.step("first").output == {"text": "hi"}

    compared = client.runs.compare(original.id, fork.id)
    assert [s.step_id for s in compared.steps] == ["first", "second"]
    assert compared.steps[0].other.reused and not compared.steps[1].other.reused
    assert compared.other.forked_from.run_id == original.id

    dry = client.runs.bulk("rerun", workflow_id=workflow_id, status="succeeded", dry_run=True)
    assert (dry.matched, sorted(dry.runs)) == (2, sorted([original.id, fork.id]))
    with pytest.raises(ValidationFailed):
        client.runs.bulk("rerun", dry_run=True)  # an empty filter would select every run


# --- the models and the served OpenAPI document ----------------------------------------------------

# Client model -> the schema of the served document it reads.
SCHEMAS = {
    models.Approval: "Approval", models.Question: "Question", models.Step: "Step", models.WorkflowRef: "WorkflowRef",
    models.OutputFile: "OutputFile", models.RunSummary: "RunSummary", models.Run: "Run", models.RunPage: "RunPage",
    models.Event: "Event", models.EventPage: "EventPage", models.RunContext: "RunContext",
    models.VersionRef: "VersionRef", models.WorkflowSummary: "WorkflowSummary", models.Workflow: "Workflow",
    models.WorkflowList: "WorkflowList", models.WorkflowVersion: "WorkflowVersion",
    models.ApprovalList: "ApprovalList", models.QuestionList: "QuestionList", models.Delivery: "Delivery",
    models.EventAccepted: "EventAccepted", models.TriggerError: "TriggerError", models.Diagnosis: "Diagnosis", models.Cause: "Cause",
    models.ActionRequest: "ActionRequest", models.ForkedFrom: "ForkedFrom", models.BulkSkip: "BulkSkip",
    models.BulkResult: "BulkResult", models.ComparedStepRun: "ComparedStepRun", models.ComparedStep: "ComparedStep",
    models.ComparedRun: "ComparedRun", models.Comparison: "Comparison", models.ItemCounts: "ItemCounts",
    models.Item: "Item", models.ItemPage: "ItemPage", models.StepError: "StepError",
}
SCHEDULES = {models.Schedule: "Schedule", models.ScheduleList: "ScheduleList"}


def json_types(node: dict, defs: dict) -> set[str]:
    """The JSON types a schema node admits ({"any"} for no constraint)."""
    if "$ref" in node:
        return json_types(defs[node["$ref"].rsplit("/", 1)[1]], defs)
    for key in ("anyOf", "oneOf"):
        if key in node:
            return set().union(*(json_types(n, defs) for n in node[key]))
    if "allOf" in node and len(node["allOf"]) == 1:
        return json_types(node["allOf"][0], defs)
    if "type" in node:
        kinds = node["type"] if isinstance(node["type"], list) else [node["type"]]
        return set(kinds)
    if "enum" in node or "const" in node:
        values = node.get("enum", [node.get("const")])
        return {{str: "string", bool: "boolean", int: "integer", type(None): "null"}.get(type(v), "any")
                for v in values}
    return {"any"}


def disagreements(model: type, served: dict, defs: dict) -> list[str]:
    ours = model.model_json_schema(ref_template="#/$defs/{model}", mode="serialization")
    our_defs = ours.get("$defs", {})
    theirs = served["properties"]
    problems = [f"the API's field {name!r} is missing from the client" for name in theirs.keys() - ours["properties"].keys()]
    problems += [f"the client's field {name!r} is not in the API's schema" for name in
                 ours["properties"].keys() - theirs.keys()]
    for name in theirs.keys() & ours["properties"].keys():
        want, have = json_types(theirs[name], defs), json_types(ours["properties"][name], our_defs)
        if "any" not in want | have and want != have:
            problems.append(f"{name}: the API answers {sorted(want)}, the client reads {sorted(have)}")
        if name in served.get("required", []) and "null" not in want and name not in ours.get("required", []) \
                and have == {"null"}:
            problems.append(f"{name}: always answered, never read")
    return problems


def test_the_client_models_agree_with_the_served_openapi_document(url):
    response = httpx.get(f"{url}/api/v1/openapi.json")
    assert response.status_code == 200, f"the API does not serve its document: {response.text[:300]}"
    document = response.json()
    defs = document["components"]["schemas"]
    compared = {**SCHEMAS, **SCHEDULES}
    missing = [name for name in compared.values() if name not in defs]
    assert not missing, f"the served document has no schema {missing}"
    problems = {name: found for model, name in compared.items() if (found := disagreements(model, defs[name], defs))}
    assert not problems, ("switchyard/client/models.py and the API's document (api/responses.py) disagree; "
                          f"bring the side that is wrong to the contract: {problems}")
