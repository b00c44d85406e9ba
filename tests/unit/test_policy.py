"""The pure policy: rules by tool and risk, constraints, private addresses, schemas, risk and budgets;
and the executors that apply it (tool steps, agent loops, http.request's redirects)."""

from __future__ import annotations

import dataclasses
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from orchestrator.errors import PermanentStepError
from orchestrator.policy import Limits, Policy, ToolSpec, budget_problem, decide, highest_risk
from workers.context import Suspend
from workers.executors import agent, tool
from workers.tools import builtin

HTTP = ToolSpec("http.request", "high", {"type": "object", "required": ["url"]})
PAY = ToolSpec("pay", "medium", {"type": "object", "required": ["amount"], "properties": {"amount": {"type": "number"}}})
ECHO = ToolSpec("echo", "low")

POLICY = Policy.model_validate({"rules": [
    {"tool": "echo", "decision": "allow", "rationale": "echo is harmless"},
    {"tool": "pay", "decision": "allow", "constraints": {"max": {"amount": 100}}},
    {"tool": "http.request", "decision": "allow", "constraints": {"hosts": ["api.example.com", "127.0.0.1"]}},
    {"risk": "high", "decision": "require_approval", "rationale": "a person signs off high-risk calls"},
], "default": "deny"})


@pytest.mark.parametrize("spec, args, addresses, decision, rule, why", [
    (ECHO, {"x": 1}, (), "allowed", "rules[0]", "echo is harmless"),
    (PAY, {"amount": 50}, (), "allowed", "rules[1]", "rule rules[1] says allow"),
    (PAY, {"amount": 500}, (), "denied", "rules[1]", "amount=500 is over the maximum 100"),
    (HTTP, {"url": "https://api.example.com/x"}, ("93.184.216.34",), "allowed", "rules[2]", "says allow"),
    (HTTP, {"url": "https://evil.example.net/"}, ("93.184.216.34",), "denied", "rules[2]", "not in"),
    # Listed explicitly, a loopback host is allowed; not listed, a private address is refused.
    (HTTP, {"url": "http://127.0.0.1:8000/"}, ("127.0.0.1",), "allowed", "rules[2]", "says allow"),
    (ToolSpec("other.http", "high"), {"url": "http://public.example/"}, ("93.184.216.34",),
     "approval_required", "rules[3]", "a person signs off"),
    # No approval can send a call to a private address the policy does not list.
    (ToolSpec("other.http", "high"), {"url": "http://169.254.169.254/"}, ("169.254.169.254",),
     "denied", "network", "private, loopback or link-local"),
    (ToolSpec("fetch", "medium"), {"x": 1}, (), "denied", "default", "the policy default says deny"),
])
def test_decide(spec, args, addresses, decision, rule, why):
    result = decide(POLICY, spec, args, addresses)
    assert (result.decision, result.rule) == (decision, rule)
    assert why in result.rationale
    assert result.risk == spec.risk and f"tool risk {spec.risk}" in result.risk_factors


@pytest.mark.parametrize("address", ["127.0.0.1", "169.254.169.254", "10.1.2.3", "192.168.0.1", "::1", "0.0.0.0"])
def test_private_addresses_are_refused_by_default(address):
    result = decide(Policy(), HTTP, {"url": "http://somewhere.example/"}, (address,))
    assert result.decision == "denied" and result.rule == "network"
    assert any("private network address" in factor for factor in result.risk_factors)


def test_constraints_that_applied_are_recorded():
    result = decide(POLICY, PAY, {"amount": 10})
    assert result.constraints == ["amount <= 100"]


def test_highest_risk():
    assert highest_risk([None, "low", "high", "medium"]) == "high"
    assert highest_risk([None]) is None


def test_budget_problem():
    assert budget_problem(Limits(tokens=100), {"tokens_in": 60, "tokens_out": 30}, "tokens", 5) is None
    assert "token budget of 100" in budget_problem(Limits(tokens=100), {"tokens_in": 60, "tokens_out": 30}, "tokens", 20)
    assert "tool call limit of 2" in budget_problem(Limits(tool_calls=2), {"tool_calls": 2}, "tool_calls")
    assert budget_problem(Limits(), {"tokens_in": 10**9}, "tokens", 10**9) is None


def test_a_rule_must_say_what_it_matches():
    with pytest.raises(ValueError, match="needs 'tool' or 'risk'"):
        Policy.model_validate({"rules": [{"decision": "deny"}]})


# -- the executors ---------------------------------------------------------------------------------

def _with_policy(ctx, policy: dict, resolved: dict[str, list[str]] | None = None):
    ctx.policy = Policy.model_validate(policy)
    ctx.resolve = lambda host: (resolved or {}).get(host, ["93.184.216.34"])
    return ctx


def test_a_denied_tool_step_fails_for_good_and_runs_nothing(make_ctx):
    ctx = _with_policy(make_ctx({"id": "t", "type": "tool", "tool": "echo", "args": {"x": 1}}),
                       {"rules": [{"tool": "echo", "decision": "deny", "rationale": "not today"}]})
    with pytest.raises(PermanentStepError) as caught:
        tool.run(ctx)
    assert caught.value.code == "policy_denied" and "not today" in caught.value.message
    assert "tool_calls" not in ctx.usage
    assert ctx.decisions[0]["decision"] == "denied" and ctx.decisions[0]["rule"] == "rules[0]"


def test_a_gated_tool_step_suspends_with_its_call(make_ctx):
    ctx = _with_policy(make_ctx({"id": "t", "type": "tool", "tool": "echo", "args": {"x": 1}}),
                       {"rules": [{"tool": "echo", "decision": "require_approval"}]})
    with pytest.raises(Suspend) as caught:
        tool.run(ctx)
    assert caught.value.kind == "approval" and caught.value.call["tool"] == "echo"
    # Approved, the next attempt makes the call.
    ctx.checkpoint = {"kind": "approval", "approval": {"approved": True, "comment": "ok", "decided_by": "ann"}}
    assert tool.run(ctx) == {"x": 1}
    assert ctx.decisions[-1]["rule"] == "approval" and "ann" in ctx.decisions[-1]["rationale"]


def test_an_agent_is_told_of_a_denied_call_and_suspends_on_a_gated_one(make_ctx):
    script = [
        {"tool_calls": [{"name": "echo", "args": {"text": "fine"}}, {"name": "fail", "args": {"message": "x"}},
                        {"name": "sleep", "args": {"seconds": 0}}]},
        "done",
    ]
    step = {"id": "ag", "type": "agent", "tools": ["echo", "fail", "sleep"], "script": script}
    ctx = _with_policy(make_ctx(step), {"rules": [
        {"tool": "echo", "decision": "allow"}, {"tool": "fail", "decision": "deny", "rationale": "no failing"},
        {"tool": "sleep", "decision": "require_approval", "rationale": "sleeping costs money"}]})
    with pytest.raises(Suspend) as caught:
        agent.run(ctx)
    suspend = caught.value
    assert suspend.kind == "approval" and suspend.call["tool"] == "sleep"
    transcript = suspend.checkpoint["transcript"]
    assert transcript[0]["result"] == {"text": "fine"}
    assert transcript[1]["result"]["code"] == "policy_denied" and "no failing" in transcript[1]["result"]["error"]
    assert [d["decision"] for d in ctx.decisions] == ["allowed", "denied", "approval_required"]

    # Rejected: the model hears the refusal and finishes.
    rejected = _with_policy(make_ctx(step), {"rules": [{"tool": "sleep", "decision": "require_approval"}]})
    rejected.checkpoint = {**suspend.checkpoint, "approval": {"approved": False, "comment": "too slow"}}
    result = agent.run(rejected)
    assert result["text"] == "done"
    assert result["tool_calls"][-1]["result"] == {"error": "the approver refused this call: too slow",
                                                  "code": "approval_rejected"}


def test_an_agent_stops_before_the_model_call_that_would_exceed_its_token_budget(make_ctx):
    step = {"id": "ag", "type": "agent", "tools": ["echo"], "prompt": "one two three",
            "script": [{"tool_calls": [{"name": "echo", "args": {"a": 1}}]}, "done"]}
    ctx = make_ctx(step)
    # The first call costs 3 words in and 1 out; the second would send 5 more: 9 is over 8.
    ctx.limits = Limits(tokens=8)
    with pytest.raises(Suspend) as caught:
        agent.run(ctx)
    assert caught.value.kind == "budget" and "token budget of 8" in caught.value.text
    assert ctx.usage["llm_calls"] == 1  # the first call fitted, the second would not
    resumed = make_ctx(step)
    resumed.checkpoint, resumed.limits = caught.value.checkpoint, Limits(tokens=1000)
    assert agent.run(resumed)["text"] == "done"


class _Redirect(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        self.send_response(302)
        self.send_header("Location", self.server.target)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("target", ["http://169.254.169.254/latest/meta-data/", "http://localhost:9/admin"])
def test_http_request_refuses_a_redirect_to_a_private_address(make_ctx, target):
    server = HTTPServer(("127.0.0.1", 0), _Redirect)
    server.target = target
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/start"
        ctx = make_ctx({"id": "h", "type": "tool", "tool": "http.request", "args": {"url": url}})
        # The first hop is allowed by name; the redirect's host is not listed.
        ctx.policy = Policy.model_validate({"rules": [
            {"tool": "http.request", "decision": "allow", "constraints": {"hosts": ["127.0.0.1"]}}]})
        with pytest.raises(PermanentStepError) as caught:
            builtin.http_request({"url": url}, ctx)
        assert caught.value.code == "policy_denied" and target in caught.value.message
    finally:
        server.shutdown()


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/", "http://169.254.169.254/latest/meta-data/"])
def test_http_request_step_to_a_private_address_is_refused_by_default(make_ctx, url):
    ctx = make_ctx({"id": "h", "type": "tool", "tool": "http.request", "args": {"url": url}})
    with pytest.raises(PermanentStepError) as caught:
        tool.run(ctx)
    assert caught.value.code == "policy_denied" and "private" in caught.value.message
    assert "tool_calls" not in ctx.usage


def test_a_decisions_json_has_every_field_of_the_decision():
    decision = decide(Policy(), ToolSpec("echo", risk="low"), {"text": "x"})
    assert decision.as_json() == dataclasses.asdict(decision)
