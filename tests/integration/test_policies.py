"""Policies on real runs: an agent's allowed, denied and approval-gated calls, the run's risk level, and a
token budget that pauses a run until an operator raises it."""

from __future__ import annotations

import pytest

from tests.integration.conftest import by_id, events, publish, start, wait_run

pytestmark = pytest.mark.usefixtures("engine_processes")


def wait_status(api, run_id: str, status: str, timeout: float = 20) -> dict:
    run = wait_run(api, run_id, statuses=(status, "succeeded", "failed", "cancelled"), timeout=timeout)
    assert run["status"] == status, (run["error"], [(s["id"], s["status"], s["error"]) for s in run["steps"]])
    return run


def test_allowed_denied_and_gated_calls_of_an_agent(api, fake_llm):
    workflow = publish(api, {
        "name": "guarded agent",
        "policy": {"rules": [
            {"tool": "echo", "decision": "allow", "rationale": "echo only repeats"},
            {"tool": "fail", "decision": "deny", "rationale": "no deliberate failures in production"},
            {"tool": "http.request", "decision": "require_approval", "rationale": "outbound calls need a person",
             "constraints": {"hosts": ["127.0.0.1"]}},
        ]},
        "steps": [{"id": "act", "type": "agent", "model": "scripted", "tools": ["echo", "fail", "http.request"],
                   "script": [
                       {"tool_calls": [{"name": "echo", "args": {"text": "hello"}}]},
                       {"tool_calls": [{"name": "fail", "args": {"message": "boom"}}]},
                       {"tool_calls": [{"name": "http.request", "args": {
                           "url": f"{fake_llm.url}/chat/completions", "method": "POST",
                           "json": {"model": "m", "messages": [{"role": "user", "content": "hi"}]}}}]},
                       "finished",
                   ]}],
    })
    run_id = start(api, workflow)
    run = wait_status(api, run_id, "waiting")
    assert run["waiting_on"] == "approval" and run["risk_level"] == "high"
    [approval] = run["approvals"]
    assert approval["call"]["tool"] == "http.request" and approval["call"]["rule"] == "rules[2]"
    assert "outbound calls need a person" in approval["prompt"]
    decisions = by_id(run)["act"]["policy"]
    assert [(d["tool"], d["decision"], d["rule"]) for d in decisions] == [
        ("echo", "allowed", "rules[0]"), ("fail", "denied", "rules[1]"), ("http.request", "approval_required", "rules[2]")]
    assert decisions[1]["rationale"] == "no deliberate failures in production"

    response = api.post(f"/runs/{run_id}/approvals/{approval['id']}/approve", json={"comment": "go ahead"})
    assert response.status_code == 200, response.get_json()
    run = wait_run(api, run_id)
    assert run["status"] == "succeeded", run["error"]
    step = by_id(run)["act"]
    assert step["output"]["text"] == "finished"
    calls = step["output"]["tool_calls"]
    assert calls[0]["result"] == {"text": "hello"}
    assert calls[1]["result"]["code"] == "policy_denied"  # the refusal reached the agent
    # Approved, the call was made (to the fake model server on loopback, which the rule lists).
    assert calls[2]["name"] == "http.request" and calls[2]["result"]["status"] == 200
    assert step["policy"][-1]["rule"] == "approval" and "go ahead" in step["policy"][-1]["rationale"]
    logged = [e for e in events(api, run_id) if e["type"] == "policy_decision"]
    assert len(logged) == len(step["policy"])


def test_an_approved_call_runs_and_a_rejected_tool_step_fails_the_run(api):
    workflow = publish(api, {
        "name": "gated tool step",
        "policy": {"rules": [{"tool": "echo", "decision": "require_approval", "rationale": "check first"}]},
        "steps": [{"id": "say", "type": "tool", "tool": "echo", "args": {"said": "{{ input.word }}"}}],
    })
    approved, rejected = start(api, workflow, {"word": "yes"}), start(api, workflow, {"word": "no"})
    for run_id, decision in ((approved, "approve"), (rejected, "reject")):
        run = wait_status(api, run_id, "waiting")
        assert run["risk_level"] == "low"
        api.post(f"/runs/{run_id}/approvals/{run['approvals'][0]['id']}/{decision}", json={"comment": "k"})
    run = wait_run(api, approved)
    assert run["status"] == "succeeded" and by_id(run)["say"]["output"] == {"said": "yes"}
    run = wait_run(api, rejected)
    assert run["status"] == "failed" and run["error"]["code"] == "approval_rejected"


def test_a_token_budget_pauses_the_run_before_the_call_and_resume_with_more_finishes(api):
    workflow = publish(api, {
        "name": "budgeted",
        "policy": {"limits": {"tokens": 8}},
        "steps": [{"id": "think", "type": "agent", "model": "scripted", "tools": ["echo"], "prompt": "one two three",
                   "script": [{"tool_calls": [{"name": "echo", "args": {"a": 1}}]}, "done"]}],
    })
    run_id = start(api, workflow)
    run = wait_status(api, run_id, "paused")
    assert run["usage"]["llm_calls"] == 1 and run["usage"]["tokens_in"] + run["usage"]["tokens_out"] <= 8
    assert by_id(run)["think"]["waiting_on"] == "budget"
    paused = [e for e in events(api, run_id) if e["type"] == "run_paused"]
    assert paused[-1]["data"]["reason"] == "budget_exceeded"
    causes = api.get(f"/runs/{run_id}/diagnosis").get_json()["causes"]
    assert "budget_exceeded" in [c["kind"] for c in causes]

    bad = api.post(f"/runs/{run_id}/resume", json={"limits": {"tokens": -1}})
    assert bad.status_code == 400 and api.get(f"/runs/{run_id}").get_json()["status"] == "paused"
    response = api.post(f"/runs/{run_id}/resume", json={"limits": {"tokens": 1000}})
    assert response.status_code == 200 and response.get_json()["limits"] == {"tokens": 1000}
    run = wait_run(api, run_id)
    assert run["status"] == "succeeded" and by_id(run)["think"]["output"]["text"] == "done"
    assert run["usage"]["llm_calls"] == 2


def test_a_definition_with_a_bad_policy_is_refused(api):
    for policy, problem in (({"rules": [{"tool": "nope", "decision": "allow"}]}, "unknown tool 'nope'"),
                            ({"rules": [{"decision": "deny"}]}, "needs 'tool' or 'risk'"),
                            ({"rules": [{"tool": "echo", "decision": "maybe"}]}, "policy.rules.0.decision")):
        response = api.put("/workflows/bad-policy", json={"name": "x", "policy": policy,
                                                           "steps": [{"id": "a", "type": "tool", "tool": "echo"}]})
        assert response.status_code == 400 and problem in response.get_json()["error"]["message"], policy
    assert api.get("/workflows/bad-policy").status_code == 404


@pytest.fixture
def tenant_policy(settings, app_for):
    """A tenant of its own with an admin token, so its policy touches no other test's runs."""
    from orchestrator.db import repository as repo
    from orchestrator.db.session import make_engine, make_sessionmaker, transaction
    from tests.integration.conftest import Api, unique

    with transaction(make_sessionmaker(make_engine(settings))) as session:
        token = repo.create_token(session, unique("policy-tenant"), "admin")[1]
    return Api(app_for(settings).test_client(), token)


def test_a_tenant_policy_comes_before_the_workflows_own_and_caps_its_limits(tenant_policy):
    api = tenant_policy
    assert api.get("/policy").get_json()["policy"] == {"rules": [], "default": "allow", "limits": {
        "tool_calls": None, "tokens": None, "credits": None}, "rate_limits": {}}
    bad = api.put("/policy", json={"rules": [{"tool": "no.such.tool", "decision": "deny"}]})
    assert bad.status_code == 400 and "unknown tool 'no.such.tool'" in bad.get_json()["error"]["message"]
    assert api.put("/policy", json={"rules": [{"risk": "high", "decision": "deny", "rationale": "tenant rule"}],
                                    "limits": {"tool_calls": 1}}).status_code == 200

    workflow = publish(api, {
        "name": "workflow allows everything",
        "policy": {"rules": [{"tool": "http.request", "decision": "allow"}], "limits": {"tool_calls": 10}},
        "steps": [{"id": "act", "type": "agent", "model": "scripted", "tools": ["echo", "http.request"], "script": [
            {"tool_calls": [{"name": "http.request", "args": {"url": "https://api.example.com/"}}]},
            {"tool_calls": [{"name": "echo", "args": {"n": 1}}]},
            {"tool_calls": [{"name": "echo", "args": {"n": 2}}]},
            "done"]}],
    })
    run_id = start(api, workflow)
    run = wait_status(api, run_id, "paused")
    decisions = by_id(run)["act"]["policy"]
    # The tenant's rule wins over the workflow's allow; the tenant's limit of one tool call caps its ten.
    assert (decisions[0]["decision"], decisions[0]["rule"], decisions[0]["rationale"]) == (
        "denied", "tenant.rules[0]", "tenant rule")
    assert [d["tool"] for d in decisions] == ["http.request", "echo", "echo"]
    assert run["usage"]["tool_calls"] == 1
    assert "tool call limit of 1" in [e for e in events(api, run_id) if e["type"] == "run_paused"][-1]["data"]["detail"]
    api.post(f"/runs/{run_id}/cancel")
