"""A definition the schema refuses still gets every other check: each problem is named, and named once."""

from __future__ import annotations

import pytest

from orchestrator import definitions
from orchestrator.errors import DefinitionInvalid, InvalidRequest


def tool(step_id: str, **fields) -> dict:
    return {"id": step_id, "type": "tool", "tool": "echo", **fields}


def problems_of(raw: dict) -> list[str]:
    with pytest.raises(DefinitionInvalid) as caught:
        definitions.parse_definition(raw)
    assert isinstance(caught.value, InvalidRequest)  # a 400 invalid_request at the API
    problems = caught.value.details["problems"]
    assert all(p in caught.value.message for p in problems)
    return problems


def test_an_unknown_step_type_does_not_hide_the_other_steps_problems():
    problems = problems_of({"name": "t", "steps": [
        {"id": "a", "type": "bogus"},
        tool("b", needs=["zz", "a"]),  # "a" exists, even though the schema refused it
        tool("c", tool="nope"),
    ]})
    assert len(problems) == 3, problems
    for needle in ("'steps.0.type': unknown step type 'bogus'", "step 'b' needs unknown step 'zz'",
                   "steps.2.tool: unknown tool 'nope'"):
        assert sum(needle in p for p in problems) == 1, (needle, problems)


def test_a_need_named_twice_is_one_problem():
    assert problems_of({"name": "t", "steps": [tool("a", needs=["zz", "zz"])]}) == ["step 'a' needs unknown step 'zz'"]
    # Also when the schema refused something else.
    problems = problems_of({"name": "t", "colour": "red", "steps": [tool("a", needs=["zz", "zz"])]})
    assert problems == ["unknown field 'colour'; remove it (the fields here are name, kind, description, input_schema, "
                        "defaults, policy, steps, triggers, retention_days, priority, concurrency)",
                        "step 'a' needs unknown step 'zz'"]


def test_what_can_still_be_read_is_checked_after_the_schema_refused_the_definition():
    problems = problems_of({
        "name": "t", "kind": "nope", "input_schema": {"type": 5},
        "policy": {"rules": [{"tool": "ghost", "decision": "deny"}]},
        "steps": [
            tool("a", colour="red", args={"text": "{{ input.ticket "}),  # invalid step: templates still checked
            tool("a", tool="nope", needs=["zz"]),
            {"id": "ag", "type": "agent", "tools": ["echo", "ghost"]},
        ],
    })
    for needle in ("'kind' must be one of 'workflow', 'conversational', got \"nope\"", "unknown field 'steps.0.colour'", "duplicate step id 'a'",
                   "step 'a' needs unknown step 'zz'", "steps.0.args.text: template syntax error",
                   "steps.1.tool: unknown tool 'nope'", "steps.2.tools: unknown tool 'ghost'",
                   "policy.rules.0.tool: unknown tool 'ghost'", "input_schema: not a valid JSON Schema"):
        assert sum(needle in p for p in problems) == 1, (needle, problems)
    assert len(problems) == len(set(problems))


def test_the_step_limit_is_checked_after_the_schema_refused_the_definition():
    with pytest.raises(DefinitionInvalid) as caught:
        definitions.parse_definition({"name": "t", "steps": [{"id": "a", "type": "bogus"}, tool("b"), tool("c")]},
                                     max_steps=2)
    problems = caught.value.details["problems"]
    assert any("unknown step type 'bogus'" in p for p in problems)
    assert "steps: 3 steps is over the limit of 2" in problems


@pytest.mark.parametrize("steps", [None, "nope", [None, 3, "x"], [{"id": 5, "type": "tool", "needs": "a"}]],
                         ids=["no-steps", "steps-not-a-list", "steps-not-objects", "id-and-needs-wrong-types"])
def test_unreadable_parts_are_left_to_the_schemas_own_problems(steps):
    raw = {"name": "t"} if steps is None else {"name": "t", "steps": steps}
    problems = problems_of(raw)
    assert problems and len(problems) == len(set(problems))
