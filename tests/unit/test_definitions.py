"""The definition gate: every bad definition is refused naming its problem; the docs/api.md example parses."""

from __future__ import annotations

import copy

import pytest

from orchestrator import definitions
from orchestrator.errors import DefinitionInvalid, InvalidRequest
from orchestrator.retry import RetryPolicy

# The example of docs/api.md ("Workflows"), verbatim.
API_EXAMPLE = {
    "name": "Triage ticket",
    "kind": "workflow",
    "input_schema": {"type": "object", "required": ["ticket"], "properties": {"ticket": {"type": "string"}}},
    "defaults": {
        "retry": {
            "max_attempts": 3,
            "backoff": "exponential",
            "initial_delay_s": 1,
            "max_delay_s": 60,
            "jitter": True,
        },
        "timeout_s": 300,
    },
    "steps": [
        {"id": "fetch", "type": "tool", "tool": "echo", "args": {"text": "{{ input.ticket }}"}},
        {
            "id": "sum",
            "type": "llm",
            "needs": ["fetch"],
            "model": "scripted",
            "prompt": "Summarise {{ steps.fetch.output.text }}",
        },
        {"id": "review", "type": "approval", "needs": ["sum"]},
        {
            "id": "act",
            "type": "agent",
            "needs": ["review"],
            "model": "scripted",
            "tools": ["echo"],
            "max_turns": 8,
        },
        {
            "id": "hook",
            "type": "wait_event",
            "needs": ["act"],
            "correlation_key": "{{ input.ticket }}",
            "timeout_s": 86400,
        },
        {"id": "cool", "type": "timer", "needs": ["hook"], "duration_s": 5},
    ],
}


def tool(step_id: str = "a", **fields) -> dict:
    return {"id": step_id, "type": "tool", "tool": "echo", **fields}


def wf(*steps: dict, **fields) -> dict:
    return {"name": "t", **fields, "steps": list(steps)}


BAD = [
    pytest.param(wf(tool("a", needs=["b"]), tool("b", needs=["a"])), "cycle in needs", id="cycle"),
    pytest.param(wf(tool("a", needs=["zz"])), "needs unknown step 'zz'", id="unknown-needs"),
    pytest.param(wf(tool("a", needs=["a"])), "step 'a' needs itself", id="self-need"),
    pytest.param(wf(tool("a"), tool("a")), "duplicate step id 'a'", id="duplicate-id"),
    pytest.param(wf({"id": "a", "type": "bogus"}), "'steps.0.type': unknown step type 'bogus'", id="unknown-type"),
    pytest.param(wf({"id": "a", "tool": "echo"}), "'steps.0.type' is required: one of 'tool'", id="missing-type"),
    pytest.param(wf(tool(tool="nope")), "steps.0.tool: unknown tool 'nope'", id="unknown-tool"),
    pytest.param(
        wf({"id": "ag", "type": "agent", "tools": ["echo", "ghost"]}),
        "steps.0.tools: unknown tool 'ghost'",
        id="unknown-agent-tool",
    ),
    pytest.param(
        wf(tool(), input_schema={"type": "nope"}), "input_schema: not a valid JSON Schema", id="bad-schema"
    ),
    pytest.param(
        wf(tool(args={"text": "{{ input.ticket "})),
        "steps.0.args.text: template syntax error",
        id="template-syntax",
    ),
    pytest.param(
        wf({"id": "l", "type": "llm", "prompt": "{% if %}"}),
        "steps.0.prompt: template syntax error",
        id="tmpl-stmt",
    ),
    pytest.param(wf(tool(colour="red")), "unknown field 'steps.0.colour'; remove it", id="extra-step-field"),
    pytest.param(wf(tool(), colour="red"), "unknown field 'colour'; remove it", id="extra-top-field"),
    pytest.param(wf(), "'steps' must be a list of at least 1 item", id="empty-steps"),
    pytest.param(wf(tool("1bad")), "'steps.0.id' must be a string matching", id="bad-step-id"),
    pytest.param(wf(tool("has space")), "'steps.0.id' must be a string matching", id="step-id-with-space"),
    pytest.param({"steps": [tool()]}, "'name' is required", id="missing-name"),
    pytest.param(wf({"id": "t", "type": "timer"}), "'steps.0.duration_s' is required", id="timer-without-duration"),
    pytest.param(wf(tool(retry={"max_attempts": 0})), "max_attempts", id="bad-retry"),
    pytest.param(["not", "an", "object"], "the definition must be a JSON object", id="not-an-object"),
]


@pytest.mark.parametrize(("raw", "needle"), BAD)
def test_bad_definition_is_refused_naming_the_problem(raw, needle):
    with pytest.raises(DefinitionInvalid) as caught:
        definitions.parse_definition(raw)
    exc = caught.value
    problems = exc.details["problems"]
    assert any(needle in p for p in problems), problems
    # A 400 invalid_request at the API.
    assert isinstance(exc, InvalidRequest)
    assert exc.code == "invalid_request"


def test_every_semantic_problem_is_listed_at_once():
    raw = wf(tool("a", tool="nope"), tool("a", needs=["zz"]), input_schema={"type": 5})
    with pytest.raises(DefinitionInvalid) as caught:
        definitions.parse_definition(raw)
    problems = caught.value.details["problems"]
    for needle in ("duplicate step id 'a'", "unknown step 'zz'", "unknown tool 'nope'", "input_schema"):
        assert any(needle in p for p in problems), (needle, problems)
    assert all(p in caught.value.message for p in problems)


def test_step_limit():
    raw = wf(tool("a"), tool("b"), tool("c"))
    with pytest.raises(DefinitionInvalid) as caught:
        definitions.parse_definition(raw, max_steps=2)
    assert any("over the limit of 2" in p for p in caught.value.details["problems"])
    assert len(definitions.parse_definition(raw, max_steps=3).steps) == 3


def test_the_api_example_parses():
    raw = copy.deepcopy(API_EXAMPLE)
    definition = definitions.parse_definition(raw)
    assert raw == API_EXAMPLE  # parsing leaves the client's body alone
    assert definition.name == "Triage ticket"
    assert [s.id for s in definition.steps] == ["fetch", "sum", "review", "act", "hook", "cool"]
    assert [s.type for s in definition.steps] == ["tool", "llm", "approval", "agent", "wait_event", "timer"]
    assert definition.needs == {
        "fetch": [],
        "sum": ["fetch"],
        "review": ["sum"],
        "act": ["review"],
        "hook": ["act"],
        "cool": ["hook"],
    }
    assert isinstance(definition.step("act"), definitions.AgentStep)
    assert definition.step("act").tools == ["echo"]
    assert definition.step("fetch").args == {"text": "{{ input.ticket }}"}
    assert definition.timeout_s(definition.step("hook")) == 86400
    assert definition.timeout_s(definition.step("fetch")) == 300
    assert definition.retry_policy(definition.step("sum")) == RetryPolicy(3, "exponential", 1.0, 60.0, True)
    with pytest.raises(KeyError):
        definition.step("nope")


def test_a_step_retry_overrides_the_defaults():
    definition = definitions.parse_definition(
        wf(tool("a", retry={"max_attempts": 5, "backoff": "fixed", "jitter": False}), tool("b"))
    )
    assert definition.retry_policy(definition.step("a")) == RetryPolicy(5, "fixed", 1.0, 60.0, False)
    assert definition.retry_policy(definition.step("b")) == RetryPolicy()


def test_agent_only_tools_are_allowed_for_agents_but_not_tool_steps():
    definitions.parse_definition(wf({"id": "ag", "type": "agent", "tools": ["human.ask", "echo"]}))
    with pytest.raises(DefinitionInvalid):
        definitions.parse_definition(wf(tool(tool="human.ask")))


def test_scripted_turns_parse_into_models():
    step = definitions.parse_definition(
        wf({"id": "ag", "type": "agent", "script": ["plain", {"tool_calls": [{"name": "echo", "args": {}}]}]})
    ).steps[0]
    assert step.script[0] == "plain"
    assert isinstance(step.script[1], definitions.ScriptedTurn)
    assert step.script[1].tool_calls == [{"name": "echo", "args": {}}]


# --- input_problems ---


@pytest.fixture
def example():
    return definitions.parse_definition(API_EXAMPLE)


def test_input_problems_accepts_a_valid_input(example):
    assert definitions.input_problems(example, {"ticket": "T-1"}) == []


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param({}, ["input: 'ticket' is a required property"], id="missing"),
        pytest.param({"ticket": 7}, ["input['ticket']: 7 is not of type 'string'"], id="wrong-type"),
        pytest.param("T-1", ["input: 'T-1' is not of type 'object'"], id="not-an-object"),
    ],
)
def test_input_problems_names_each_problem(example, value, expected):
    assert definitions.input_problems(example, value) == expected


def test_no_input_schema_accepts_anything():
    definition = definitions.parse_definition(wf(tool()))
    assert definitions.input_problems(definition, {"anything": [1, 2]}) == []
    assert definitions.input_problems(definition, None) == []
