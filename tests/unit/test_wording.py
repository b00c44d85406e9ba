"""pydantic's validation errors in the contract's words (orchestrator.wording): each problem names the field
path as the client wrote it and says what to do; none of pydantic's own phrases are left."""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from api import schemas
from orchestrator import wording
from orchestrator.definitions import Definition
from orchestrator.policy import Policy

# What pydantic says, which must never reach a client.
PYDANTIC = re.compile(r"Extra inputs|Field required|Input should|should be a valid|String should|List should|"
                      r"Value error|Unable to extract|Input tag|errors\.pydantic|\[type=|validation error for",
                      re.IGNORECASE)


def said(model, raw) -> list[wording.Problem]:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(raw)
    found = wording.problems(caught.value, model)
    assert found and not any(PYDANTIC.search(p.message) for p in found), found
    return found


CASES = [
    (schemas.StartRun, {"inputs": {}}, [
        ("workflow_id", "'workflow_id' is required"),
        ("inputs", "unknown field 'inputs'; did you mean 'input'?")]),
    (schemas.StartRun, {"workflow_id": 7, "version": "3"}, [
        ("workflow_id", "'workflow_id' must be a string, got 7"),
        ("version", "'version' must be an integer, got \"3\"")]),
    (schemas.StartRun, {"workflow_id": "", "version": 0}, [
        ("workflow_id", "'workflow_id' must be a non-empty string, got \"\""),
        ("version", "'version' must be at least 1, got 0")]),
    (schemas.ControlBody, {"mode": "fast", "reason": None, "limits": {"tokens": -1}}, [
        ("mode", "'mode' must be one of 'immediate', 'graceful', got \"fast\""),
        ("limits.tokens", "'limits.tokens' must be at least 0, got -1")]),
    (schemas.BulkBody, {"filter": {"stauts": "failed"}, "limit": 5000}, [
        ("filter.stauts", "unknown field 'filter.stauts'; did you mean 'filter.status'?"),
        ("limit", "'limit' must be at most 1000, got 5000")]),
    (schemas.BulkBody, {"filter": {"status": "lost"}}, [
        ("filter.status", "'filter.status' must be one of 'queued', 'running', 'waiting', 'paused', 'succeeded', "
                          "'failed', 'cancelled' or a list, got \"lost\"")]),
    (schemas.BulkBody, {"filter": {"status": ["failed", "lost"]}}, [
        ("filter.status.1", "'filter.status.1' must be one of 'queued', 'running', 'waiting', 'paused', 'succeeded', "
                            "'failed', 'cancelled', got \"lost\"")]),
    (schemas.BulkBody, {"filter": {"created_after": "yesterday"}}, [
        ("filter.created_after", "'filter.created_after' must be an RFC 3339 time (2024-05-01T12:00:00Z), "
                                 "got \"yesterday\"")]),
    (schemas.TokenCreate, {"role": "root", "nmae": "x"}, [
        ("role", "'role' must be one of 'viewer', 'operator', 'admin', got \"root\""),
        ("nmae", "unknown field 'nmae'; did you mean 'name'?")]),
    (schemas.ForkBody, {"from_step": "a", "steps": {"s": "prompt"}, "colour": 1}, [
        ("steps.s", "'steps.s' must be an object, got \"prompt\""),
        ("colour", "unknown field 'colour'; remove it (the fields here are from_step, input, input_patch, steps, "
                   "version)")]),
    (Policy, {"rules": [{"decision": "allow"}]}, [
        ("rules.0", "rules.0: a policy rule needs 'tool' or 'risk' to say which calls it applies to")]),
]


@pytest.mark.parametrize(("model", "raw", "expected"), CASES, ids=[f"{c[0].__name__}-{i}" for i, c in enumerate(CASES)])
def test_each_problem_names_its_field_in_plain_words(model, raw, expected):
    assert [(p.field, p.message) for p in said(model, raw)] == expected


def test_a_steps_own_fields_are_named_without_its_type():
    found = said(Definition, {"name": "t", "steps": [
        {"id": "a", "type": "tool", "tool": "echo", "colour": "red", "retry": {"max_attempts": 0}},
        {"id": "b", "type": "bogus"},
        {"id": "c"},
        {"id": "t", "type": "timer"},
        {"id": "l", "type": "llm", "prompt": "p", "script": [5, {"contnet": "x"}]},
    ]})
    messages = [p.message for p in found]
    # The fields every step has, then the type's own (the list grows with the language).
    assert messages[1].startswith("unknown field 'steps.0.colour'; remove it (the fields here are id, needs, retry,")
    assert messages[1].endswith(", tool, args)") and "type" not in messages[1]
    assert messages[:1] + messages[2:] == [
        "'steps.0.retry.max_attempts' must be at least 1, got 0",
        "'steps.1.type': unknown step type 'bogus'; use one of 'tool', 'llm', 'agent', 'approval', 'question', "
        "'wait_event', 'timer', 'workflow'",
        "'steps.2.type' is required: one of 'tool', 'llm', 'agent', 'approval', 'question', 'wait_event', 'timer', "
        "'workflow'",
        "'steps.3.duration_s' is required",
        "'steps.4.script.0' must be a string or an object, got 5",
        "unknown field 'steps.4.script.1.contnet'; did you mean 'steps.4.script.1.content'?",
    ]
    assert [p.unknown for p in found] == [False, True, False, False, False, False, True]


def test_a_long_value_is_cut_short_in_the_problem():
    (problem,) = said(schemas.StartRun, {"workflow_id": "w", "version": "9" * 500})
    assert problem.message.startswith("'version' must be an integer, got \"999") and problem.message.endswith("...")
    assert len(problem.message) < 120
