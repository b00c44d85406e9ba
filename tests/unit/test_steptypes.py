"""The step type registry: the built-ins, how waiting types park and fall due, and a toy type
registered later that the definition gate, the scheduler's graph, the UI and the workers all see."""

from __future__ import annotations

import pytest
from pydantic.json_schema import models_json_schema

from api.ui import graph
from orchestrator import dag, definitions, steptypes
from orchestrator.core.reports import ErrorInfo, Outcome
from orchestrator.errors import DefinitionInvalid
from orchestrator.states import RunStatus, StepStatus
from orchestrator.steptypes import Parking
from orchestrator.steptypes.workflow import WorkflowStep
from tests.unit.conftest import build_step
from tests.unit.toy_steptype import TOYS
from workers import executors
from workers.executors import agent, llm, tool

BUILTINS = [
    # name, waits_on, executor, label, definition model
    ("tool", None, "workers.executors.tool:run", "Tool", definitions.ToolStep),
    ("llm", None, "workers.executors.llm:run", "LLM", definitions.LlmStep),
    ("agent", None, "workers.executors.agent:run", "Agent", definitions.AgentStep),
    ("approval", "approval", None, "Approval", definitions.ApprovalStep),
    ("question", "question", None, "Question", definitions.QuestionStep),
    ("wait_event", "event", None, "Wait for event", definitions.WaitEventStep),
    ("timer", "timer", None, "Timer", definitions.TimerStep),
    ("workflow", "child_run", None, "Sub-workflow", WorkflowStep),
]


@pytest.mark.parametrize(("name", "waits_on", "executor", "label", "model"), BUILTINS)
def test_each_builtin_is_registered_as_it_runs(name, waits_on, executor, label, model):
    step_type = steptypes.get(name)
    assert (step_type.name, step_type.waits_on, step_type.executor, step_type.label) == (
        name, waits_on, executor, label)
    assert step_type.definition is model
    assert (dag.WAITING_TYPES.get(name), dag.waiting_on(name)) == (waits_on, waits_on or "question")
    assert graph.type_label(name) == label


def test_builtins_come_in_registration_order_and_make_step_types():
    assert steptypes.names() == ("tool", "llm", "agent", "approval", "question", "wait_event", "timer", "workflow")
    assert definitions.STEP_TYPES == steptypes.names()
    assert dict(steptypes.waiting_types()) == {
        "approval": "approval", "question": "question", "wait_event": "event", "timer": "timer",
        "workflow": "child_run"}


def test_worker_executors_are_the_executor_modules_functions():
    assert [executors.executor_for(steptypes.get(n).executor) for n in ("tool", "llm", "agent")] == [
        tool.run, llm.run, agent.run]


def test_an_unknown_type_is_a_value_error_naming_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown step type 'nope'; use one of \['tool', 'llm'"):
        steptypes.get("nope")
    assert steptypes.find("nope") is None
    assert graph.type_label("nope") == "nope"


CONTEXT = {"input": {"ticket": "T-1", "long": "k" * 300}, "steps": {}}
EVENT_TIMEOUT = ErrorInfo("event_timeout", "no event arrived before timeout_s", False)

PARKINGS = [
    pytest.param({"type": "timer", "duration_s": 5}, None, Parking("timer", due_in_s=5.0), id="timer"),
    pytest.param({"type": "wait_event", "correlation_key": "{{ input.ticket }}", "timeout_s": 60}, CONTEXT,
                 Parking("event", due_in_s=60.0, correlation_key="T-1"), id="wait_event"),
    pytest.param({"type": "wait_event", "correlation_key": "{{ input.long }}"}, CONTEXT,
                 Parking("event", correlation_key="k" * 200), id="wait_event-no-timeout-long-key"),
    pytest.param({"type": "approval"}, CONTEXT, Parking("approval"), id="approval-no-prompt"),
    pytest.param({"type": "approval", "prompt": "Ship {{ input.ticket }}?"}, CONTEXT,
                 Parking("approval", request="Ship T-1?"), id="approval"),
    pytest.param({"type": "question", "question": "Why {{ input.ticket }}?"}, CONTEXT,
                 Parking("question", request="Why T-1?"), id="question"),
    pytest.param({"type": "question", "question": "{{ input.ticket[:0] }}"}, CONTEXT,
                 Parking("question", request="?"), id="question-empty"),
]


@pytest.mark.parametrize(("step", "context", "parking"), PARKINGS)
def test_park_says_how_a_waiting_step_waits(step, context, parking):
    model = build_step({"id": "w", **step})
    assert steptypes.get(model.type).park(model, context) == parking


def test_a_wait_events_key_that_fails_to_render_fails_the_step():
    model = build_step({"id": "w", "type": "wait_event", "correlation_key": "{{ input.nope }}", "timeout_s": 9})
    parking = steptypes.get("wait_event").park(model, CONTEXT)
    assert (parking.waits_on, parking.due_in_s, parking.correlation_key) == ("event", 9.0, None)
    assert parking.error is not None and parking.error.code == "template_error"
    assert not parking.error.retryable and "input.nope" in parking.error.message


@pytest.mark.parametrize(("step", "field"), [
    ({"type": "approval", "prompt": "Ship {{ input.nope }}?"}, "prompt"),
    ({"type": "question", "question": "Why {{ input.nope }}?"}, "question"),
])
def test_a_request_that_fails_to_render_shows_the_error_to_the_person(step, field):
    model = build_step({"id": "w", **step})
    request = steptypes.get(model.type).park(model, CONTEXT).request
    assert request.startswith(f"{step[field]} (template error: template ") and "nope" in request


@pytest.mark.parametrize(("step", "outcome"), [
    ({"type": "timer", "duration_s": 1}, Outcome(output={"fired": True})),
    ({"type": "wait_event", "correlation_key": "k", "timeout_s": 1}, Outcome(error=EVENT_TIMEOUT)),
    ({"type": "approval"}, None),
    ({"type": "question"}, None),
    ({"type": "tool", "tool": "echo"}, None),
])
def test_on_due_says_what_a_due_time_passing_does(step, outcome):
    model = build_step({"id": "w", **step})
    assert steptypes.get(model.type).on_due(model) == outcome


def test_a_worker_type_is_never_parked():
    with pytest.raises(TypeError, match="runs on a worker"):
        steptypes.get("tool").park(build_step({"id": "t", "type": "tool", "tool": "echo"}), CONTEXT)


@pytest.mark.parametrize(("change", "needle"), [
    ({}, "already registered"),
    ({"name": "other"}, "Literal['other']"),
    ({"executor": "x.y"}, "either an executor"),
    ({"waits_on": None}, "either an executor"),
    ({"label": ""}, "has no label"),
], ids=["duplicate", "model-of-another-type", "both", "neither", "no-label"])
def test_a_malformed_or_duplicate_type_is_refused(change, needle):
    bad = type("Bad", (type(steptypes.get("timer")),), change)()
    with pytest.raises(ValueError, match=needle.replace("[", r"\[")):
        steptypes.register(bad)
    assert steptypes.names()[-1] == "workflow"


# --- a type registered later: one module (tests/unit/toy_steptype.py) and its register call ---

TOY_DEFINITION = {"name": "toy", "steps": [
    {"id": "loud", "type": "shout", "text": "hi {{ input.who }}"},
    {"id": "rest", "type": "pause_for", "needs": ["loud"], "seconds": 2},
]}


@pytest.fixture
def toys():
    for toy in TOYS:
        steptypes.register(toy)
    try:
        yield
    finally:
        for toy in TOYS:
            steptypes.unregister(toy.name)


def test_before_registration_a_toy_type_is_refused_naming_the_known_types():
    with pytest.raises(DefinitionInvalid) as caught:
        definitions.parse_definition(TOY_DEFINITION)
    assert caught.value.details["problems"][0] == (
        "'steps.0.type': unknown step type 'shout'; use one of "
        "'tool', 'llm', 'agent', 'approval', 'question', 'wait_event', 'timer', 'workflow'")
    assert "pause_for" not in dag.WAITING_TYPES


def test_a_registered_toy_type_is_accepted_everywhere(toys, make_ctx):
    definition = definitions.parse_definition(TOY_DEFINITION)
    assert [type(s).__name__ for s in definition.steps] == ["ShoutStep", "PauseForStep"]
    assert definitions.STEP_TYPES[-2:] == ("shout", "pause_for")
    assert dict(dag.WAITING_TYPES)["pause_for"] == "timer" and "shout" not in dag.WAITING_TYPES
    decision = dag.advance(definition.needs, {"loud": StepStatus.SUCCEEDED, "rest": StepStatus.PENDING},
                           {"loud": "shout", "rest": "pause_for"})
    assert (decision.park, decision.run_status, decision.waiting_on) == (["rest"], RunStatus.WAITING, "timer")
    rest = definition.step("rest")
    assert steptypes.get("pause_for").park(rest, None) == Parking("timer", due_in_s=2.0)
    assert steptypes.get("pause_for").on_due(rest) == Outcome(output={"paused_for": 2.0})
    nodes = graph.layout(TOY_DEFINITION["steps"]).nodes
    assert [(n.type, n.type_label) for n in nodes] == [("shout", "Shout"), ("pause_for", "Pause")]
    ctx = make_ctx(TOY_DEFINITION["steps"][0], template_context={"input": {"who": "you"}, "steps": {}})
    assert executors.execute(ctx) == {"text": "HI YOU"}
    _, schema = models_json_schema([(definitions.Definition, "validation")])
    assert {"ShoutStep", "PauseForStep"} <= set(schema["$defs"])


def test_an_unregistered_toy_type_is_gone_again(toys):
    for toy in TOYS:
        steptypes.unregister(toy.name)
    try:
        with pytest.raises(DefinitionInvalid, match="unknown step type 'shout'"):
            definitions.parse_definition(TOY_DEFINITION)
        assert "pause_for" not in dag.WAITING_TYPES and graph.type_label("pause_for") == "pause_for"
        with pytest.raises(ValueError, match="unknown step type 'shout'"):
            steptypes.unregister("shout")
    finally:
        for toy in TOYS:
            steptypes.register(toy)


def test_a_toy_type_that_does_not_run_on_a_worker_is_refused_by_the_workers(toys, make_ctx):
    ctx = make_ctx({"id": "rest", "type": "pause_for", "seconds": 1})
    with pytest.raises(Exception, match="does not run on a worker"):
        executors.execute(ctx)
