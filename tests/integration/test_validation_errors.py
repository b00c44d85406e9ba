"""Every 400 the API answers is in the contract's shape and words: the main endpoints walked with bad bodies
and parameters, none of pydantic's phrases in any answer, each problem naming its field; publish-time
checks of templates, literal tool arguments and models (publish, dry run, fork overrides); and wrong
tool arguments at run time failing the step with invalid_arguments, through real workers."""

from __future__ import annotations

import json
import re

import pytest

from tests.integration.conftest import by_id, publish, start, unique, wait_run

# What pydantic says, which must never reach a client.
PYDANTIC = re.compile(r"Extra inputs|Field required|Input should|should be a valid|String should|List should|"
                      r"Value error|Unable to extract|Input tag|errors\.pydantic|\[type=|validation error for|"
                      r"Dictionary should|Object has no attribute", re.IGNORECASE)

ECHO = [{"id": "a", "type": "tool", "tool": "echo", "args": {"text": "hi"}}]


def refused(response) -> dict:
    """The error of a 400 answer, checked to be the contract's shape and free of pydantic's words."""
    body = response.get_json()
    assert response.status_code == 400, (response.status_code, body)
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}, body
    error = body["error"]
    assert error["code"] == "invalid_request" and isinstance(error["details"], dict), error
    assert isinstance(error["message"], str) and error["message"], error
    assert not PYDANTIC.search(json.dumps(body)), body
    for problem in error["details"].get("problems", []):
        assert isinstance(problem, str) and problem in error["message"], (problem, error["message"])
    return error


# (method, path, body, what the answer must say): {wf} is a published workflow, {run} a run of it.
BAD_BODIES = [
    ("post", "/runs", {"inputs": {}}, ["unknown field 'inputs'; did you mean 'input'?", "'workflow_id' is required"]),
    ("post", "/runs", {"workflow_id": 5, "input": {}}, ["'workflow_id' must be a string, got 5"]),
    ("post", "/runs", {"workflow_id": "{wf}", "version": "2"}, ["'version' must be an integer, got \"2\""]),
    ("post", "/runs", {"workflow_id": "{wf}", "priority": 12}, ["'priority'"]),
    ("post", "/runs", [1, 2], ["the request body must be a JSON object"]),
    ("post", "/runs/{run}/cancel", {"mode": "fast"}, ["'mode' must be one of 'immediate', 'graceful', got \"fast\""]),
    ("post", "/runs/{run}/resume", {"limits": {"tokens": "lots"}}, ["'limits.tokens' must be an integer"]),
    ("post", "/runs/{run}/pause", {"reson": "x"}, ["unknown field 'reson'; did you mean 'reason'?"]),
    ("post", "/runs/{run}/approvals/apr_x/approve", {"comment": 5}, ["'comment' must be a string, got 5"]),
    ("post", "/runs/{run}/approvals/apr_x/request_changes", {"coment": "x"},
     ["unknown field 'coment'; did you mean 'comment'?"]),
    ("post", "/runs/{run}/questions/q_x/answer", {}, ["'answer' is required"]),
    ("post", "/runs/{run}/fork", {"from_step": 5, "input_patch": "x"},
     ["'from_step' must be a string, got 5", "'input_patch' must be an object, got \"x\""]),
    ("post", "/runs/bulk/cancel", {"filter": {"stauts": "failed"}, "limit": 0},
     ["unknown field 'filter.stauts'; did you mean 'filter.status'?", "'limit' must be at least 1, got 0"]),
    ("post", "/runs/bulk/retry", {"filter": {"status": "lost"}}, ["'filter.status' must be one of 'queued'"]),
    ("post", "/runs/bulk/fork", {"filter": {"created_after": "yesterday"}, "from_step": "a"},
     ["'filter.created_after' must be an RFC 3339 time"]),
    ("post", "/events", {"corelation_key": "k", "payload": {}}, ["unknown field 'corelation_key'; did you mean "
                                                                 "'correlation_key'?"]),
    ("post", "/tokens", {"role": "root"}, ["'role' must be one of 'viewer', 'operator', 'admin', got \"root\""]),
    ("post", "/workflows/{wf}/webhook-secrets", {"overlap_s": -1}, ["'overlap_s' must be at least 0, got -1"]),
    ("put", "/policy", {"rules": [{"decision": "maybe", "tool": "echo"}], "defualt": "allow"},
     ["'rules.0.decision' must be one of 'allow', 'deny', 'require_approval', got \"maybe\"",
      "unknown field 'defualt'; did you mean 'default'?"]),
    ("put", "/policy", {"rules": [{"decision": "deny"}]}, ["rules.0: a policy rule needs 'tool' or 'risk'"]),
    ("put", "/workflows/{wf}/schedules/nightly", {"cron": 5, "overlap": "sometimes"},
     ["'cron' must be a string, got 5", "'overlap' must be one of 'skip', 'allow', 'cancel_previous'"]),
    ("put", "/workflows/{wf}/schedules/nightly", {"timezone": "UTC"}, ["'cron' is required"]),
    ("put", "/workflows/{wf}", {"name": "x", "stpes": ECHO}, ["unknown field 'stpes'; did you mean 'steps'?",
                                                              "'steps' is required"]),
    ("put", "/workflows/{wf}", {"name": "x", "steps": [{"id": "a", "type": "tool", "tool": "echo", "arg": {}}]},
     ["unknown field 'steps.0.arg'; did you mean 'steps.0.args'?"]),
    ("put", "/workflows/{wf}", {"name": "x", "steps": [{"id": "a", "type": "tol"}]},
     ["'steps.0.type': unknown step type 'tol'; use one of 'tool'"]),
    ("put", "/workflows/{wf}", {"name": "x", "steps": [{"id": "t", "type": "timer", "duration_s": "soon"}]},
     ["'steps.0.duration_s' must be a number, got \"soon\""]),
    ("put", "/workflows/{wf}", {"name": "x", "steps": [{"id": "t", "type": "timer"}], "defaults": {"timeout_s": 0}},
     ["'steps.0.duration_s' is required", "'defaults.timeout_s' must be greater than 0, got 0"]),
]


@pytest.fixture(scope="module")
def places(app, tokens) -> dict[str, str]:
    """A published workflow and a run of it (never started by a worker: bodies are refused before)."""
    from tests.integration.conftest import Api

    api = Api(app.test_client(), tokens["admin"])
    workflow = publish(api, {"name": "target", "steps": ECHO})
    return {"wf": workflow, "run": start(api, workflow)}


def _filled(value, places: dict[str, str]):
    return json.loads(json.dumps(value).replace("{wf}", places["wf"]).replace("{run}", places["run"]))


@pytest.mark.parametrize(("method", "path", "body", "said"), BAD_BODIES,
                         ids=[f"{m} {p} {i}" for i, (m, p, _, _) in enumerate(BAD_BODIES)])
def test_a_bad_body_is_a_400_in_plain_words_naming_the_field(api, places, method, path, body, said):
    error = refused(getattr(api, method)(_filled(path, places), json=_filled(body, places)))
    for needle in said:
        assert needle in error["message"], (needle, error)
        if isinstance(body, dict):
            assert any(needle in p for p in error["details"]["problems"]), (needle, error)


def test_one_field_at_fault_is_named_in_details_and_unknown_fields_are_listed(api, places):
    error = refused(api.post("/runs", json={"workflow_id": places["wf"], "version": 0}))
    assert error["details"] == {"problems": ["'version' must be at least 1, got 0"], "field": "version"}
    error = refused(api.post("/runs", json={"workflow_id": places["wf"], "inputs": {}, "versoin": 1}))
    assert error["details"]["unknown"] == ["inputs", "versoin"] and "field" not in error["details"]
    assert error["details"]["problems"] == ["unknown field 'inputs'; did you mean 'input'?",
                                            "unknown field 'versoin'; did you mean 'version'?"]


@pytest.mark.parametrize(("method", "path", "raw", "said"), [
    ("post", "/runs", b"{not json", "the request body is not valid JSON"),
    ("post", "/runs", b"", "the request needs a JSON body"),
    ("put", "/workflows/{wf}", b"[1", "the request body is not valid JSON"),
    ("post", "/events", b'{"name": "a\\u0000b"}', "NUL"),
    ("post", "/runs", b"[" * 100 + b"]" * 100, "nested deeper than 64 levels"),
], ids=["malformed", "empty", "malformed-definition", "nul", "deep"])
def test_a_body_that_is_not_usable_json_is_a_400_saying_why(api, places, method, path, raw, said):
    response = getattr(api, method)(_filled(path, places), data=raw, headers={"Content-Type": "application/json"})
    assert said in refused(response)["message"]


@pytest.mark.parametrize("query", ["/runs?limit=abc", "/runs?limit=0", "/runs?status=lost", "/approvals?status=nope",
                                   "/questions?status=open-ish", "/workflows?archived=maybe", "/runs?cursor=@@",
                                   "/runs/{run}/events?after=x"])
def test_a_bad_query_parameter_is_a_400_naming_it(api, places, query):
    error = refused(api.get(_filled(query, places)))
    name = query.split("?")[1].split("=")[0]
    assert name in error["message"], error


# --- what is refused at publish, and the same in a dry run ---

PUBLISH_REFUSALS = [
    ({"name": "t", "steps": [{"id": "a", "type": "tool", "tool": "echo"},
                             {"id": "b", "type": "llm", "model": "scripted", "prompt": "{{ steps.nope.output }}"}]},
     "steps.1.prompt: names step 'nope', which is not a step of this workflow"),
    ({"name": "t", "steps": [{"id": "a", "type": "tool", "tool": "echo"},
                             {"id": "b", "type": "llm", "model": "scripted", "prompt": "{{ steps.a.output }}"}]},
     "steps.1.prompt: names step 'a', which is not upstream of this step (add it to needs"),
    ({"name": "t", "steps": [{"id": "s", "type": "tool", "tool": "sleep", "args": {"seconds": "five"}}]},
     "steps.0.args.seconds: the tool 'sleep' takes a number here, got \"five\""),
    ({"name": "t", "steps": [{"id": "m", "type": "llm", "model": "gpt-5", "prompt": "hi"}]},
     "steps.0.model: unknown model 'gpt-5'; known models: openai, openai/gpt-4o-mini, scripted"),
    ({"name": "t", "steps": [{"id": "ag", "type": "agent", "tools": ["sleep"], "script": [
        {"tool_calls": [{"name": "sleep", "args": {"seconds": "five"}}]}, "slept"]}]},
     "steps.0.script[0].tool_calls[0].args.seconds: the tool 'sleep' takes a number here, got \"five\""),
]


@pytest.mark.parametrize(("definition", "said"), PUBLISH_REFUSALS, ids=["unknown-step", "not-upstream",
                                                                        "literal-argument", "unknown-model",
                                                                        "scripted-call"])
@pytest.mark.parametrize("dry_run", [False, True], ids=["publish", "dry-run"])
def test_a_definition_that_would_fail_at_run_time_is_refused_at_publish(api, definition, said, dry_run):
    workflow = unique("wf")
    error = refused(api.put(f"/workflows/{workflow}" + ("?dry_run=true" if dry_run else ""), json=definition))
    assert any(p.startswith(said) for p in error["details"]["problems"]), error
    assert api.get(f"/workflows/{workflow}").status_code == 404  # nothing was stored


def test_a_dry_run_checks_the_child_workflows_too(api):
    definition = {"name": "t", "steps": [{"id": "c", "type": "workflow", "workflow_id": "nowhere"}]}
    error = refused(api.put(f"/workflows/{unique('wf')}?dry_run=true", json=definition))
    assert error["details"]["problems"] == ["steps.0.workflow_id: no workflow 'nowhere' in this tenant; publish it first"]


def test_templated_arguments_and_known_models_are_published(api):
    publish(api, {"name": "t", "steps": [
        {"id": "s", "type": "tool", "tool": "sleep", "args": {"seconds": "{{ input.seconds }}"}},
        {"id": "m", "type": "llm", "model": "openai/any-model", "needs": ["s"], "prompt": "{{ steps.s.output }}"},
    ]})


# --- at run time ---

@pytest.mark.usefixtures("engine_processes")
def test_arguments_of_the_wrong_type_at_run_time_fail_the_step_with_invalid_arguments_once(api):
    workflow = publish(api, {"name": "sleepy", "steps": [
        {"id": "nap", "type": "tool", "tool": "sleep", "args": {"seconds": "{{ input.seconds }}"},
         "retry": {"max_attempts": 3, "initial_delay_s": 0}},
    ]})
    run = wait_run(api, start(api, workflow, {"seconds": "five"}))
    nap = by_id(run)["nap"]
    assert run["status"] == "failed" and run["error"]["code"] == "invalid_arguments", run
    assert (nap["status"], nap["attempt"], nap["error"]["code"]) == ("failed", 1, "invalid_arguments"), nap
    assert nap["error"]["retryable"] is False
    assert "seconds: the tool 'sleep' takes a number here, got \"five\"" in nap["error"]["message"]
    said = {"tool": "sleep", "field": "seconds", "problems": ["seconds: the tool 'sleep' takes a number here, got \"five\""]}
    assert nap["error"]["details"] == said, nap["error"]
    assert (run["error"]["step_id"], run["error"]["details"]) == ("nap", said), run["error"]
    assert not nap.get("policy")  # refused before the policy was asked: no decision recorded

    # A fork whose override writes the same mistake literally is refused naming it; a good one runs.
    error = refused(api.post(f"/runs/{run['id']}/fork", json={"from_step": "nap",
                                                             "steps": {"nap": {"args": {"seconds": "five"}}}}))
    assert any("steps.nap.args.seconds: the tool 'sleep' takes a number" in p for p in error["details"]["problems"])
    fork = api.post(f"/runs/{run['id']}/fork", json={"from_step": "nap", "input_patch": {"seconds": 0}})
    assert fork.status_code == 201, fork.get_json()
    assert wait_run(api, fork.get_json()["id"])["status"] == "succeeded"
