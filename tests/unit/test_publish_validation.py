"""Publish-time checks beyond the schema (orchestrator.validation): the steps templates name, literal tool
arguments (a tool step's, and a scripted agent's calls) against the tool's schema, and models; and tool
arguments at run time (invalid_arguments), checked once, before the policy, their details kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator import definitions, registry, validation
from orchestrator.core.reports import ErrorInfo
from orchestrator.errors import DefinitionInvalid, InvalidArguments, PermanentStepError
from orchestrator.policy import Policy, ToolSpec, decide
from orchestrator.settings import PriceTable, Settings
from workers import executors, tasks
from workers.executors import agent


def wf(*steps: dict, **fields) -> dict:
    return {"name": "t", **fields, "steps": list(steps)}


def tool(step_id: str, name: str = "echo", **fields) -> dict:
    return {"id": step_id, "type": "tool", "tool": name, **fields}


def llm(step_id: str, **fields) -> dict:
    return {"id": step_id, "type": "llm", "prompt": "hi", **fields}


def scripted(step_id: str, *turns, tools: tuple[str, ...] = ("sleep",), **fields) -> dict:
    """An agent step of the scripted model whose replies are ``turns``."""
    return {"id": step_id, "type": "agent", "tools": list(tools), "script": list(turns), **fields}


def calls(*pairs: tuple[str, dict]) -> dict:
    """A scripted reply making these tool calls (name, args)."""
    return {"tool_calls": [{"name": name, "args": args} for name, args in pairs]}


def problems_of(raw: dict, **kw) -> list[str]:
    with pytest.raises(DefinitionInvalid) as caught:
        definitions.parse_definition(raw, **kw)
    assert caught.value.code == "invalid_request"
    return caught.value.details["problems"]


# --- templates name steps that are upstream ---

REFUSED_TEMPLATES = [
    pytest.param(wf(tool("a"), llm("b", prompt="{{ steps.nope.output }}")),
                 "steps.1.prompt: names step 'nope', which is not a step of this workflow; use one of ['a', 'b']",
                 id="unknown-step"),
    pytest.param(wf(tool("a"), llm("b", prompt="{{ steps.a.output.text }}")),
                 "steps.1.prompt: names step 'a', which is not upstream of this step (add it to needs",
                 id="not-upstream"),
    pytest.param(wf(tool("a", args={"x": "{{ steps.b.output }}"}), tool("b", needs=["a"])),
                 "steps.0.args.x: names step 'b', which is not upstream", id="downstream-in-args"),
    pytest.param(wf(tool("a"), tool("b", args={"list": ["ok", "{{ steps['a'] }}"]})),
                 "steps.1.args.list[1]: names step 'a', which is not upstream", id="subscript-in-a-list"),
    pytest.param(wf(tool("a"), {"id": "w", "type": "wait_event", "correlation_key": "{{ steps.zz.output }}"}),
                 "steps.1.correlation_key: names step 'zz', which is not a step", id="waiting-step"),
    pytest.param(wf(tool("a"), {"id": "q", "type": "approval", "prompt": "{{ steps.a.output }}"}),
                 "steps.1.prompt: names step 'a', which is not upstream", id="approval-prompt"),
]


@pytest.mark.parametrize(("raw", "needle"), REFUSED_TEMPLATES)
def test_a_template_naming_a_step_it_cannot_read_is_refused_naming_its_field(raw, needle):
    problems = problems_of(raw)
    assert sum(needle in p for p in problems) == 1, (needle, problems)


def test_templates_reading_steps_upstream_directly_or_not_pass():
    definitions.parse_definition(wf(
        tool("a"), tool("b", needs=["a"]),
        llm("c", needs=["b"], prompt="{{ steps.a.output.text }} and {{ steps['b'].output }} {{ input.x }}"),
        tool("d", needs=["c"], args={"deep": {"list": ["{{ steps.c.output.text }}"]}}),
    ))


def test_a_when_expression_naming_an_unknown_step_says_so():
    problems = problems_of(wf(tool("a"), tool("b", needs=["a"], when="steps.ghost.output")))
    assert problems == ["steps.1.when: names step 'ghost', which is not a step of this workflow; use one of ['a', 'b']"]


# --- literal tool arguments ---

REFUSED_ARGUMENTS = [
    pytest.param(tool("s", "sleep", args={"seconds": "five"}),
                 "steps.0.args.seconds: the tool 'sleep' takes a number here, got \"five\"; fix the value, or make it "
                 "a template (checked when the step runs)", id="wrong-type"),
    pytest.param(tool("s", "sleep", args={"seconds": -1}), "steps.0.args.seconds: -1 is less than the minimum of 0",
                 id="below-minimum"),
    pytest.param(tool("h", "http.request", args={"method": "GET"}),
                 "steps.0.args.url: the tool 'http.request' needs this argument; add it", id="missing-required"),
    pytest.param(tool("h", "http.request", args={"url": "{{ input.url }}", "timeout_s": "soon"}),
                 "steps.0.args.timeout_s: the tool 'http.request' takes a number here, got \"soon\"",
                 id="literal-beside-a-template"),
    pytest.param(tool("h", "http.request", args={"headers": {"x": "{{ input.h }}"}}),
                 "steps.0.args.url: the tool 'http.request' needs this argument", id="required-beside-templates"),
    pytest.param(tool("f", "fail", args={"until_attempt": 2.5}),
                 "steps.0.args.until_attempt: the tool 'fail' takes an integer here, got 2.5", id="not-an-integer"),
]


@pytest.mark.parametrize(("step", "needle"), REFUSED_ARGUMENTS)
def test_literal_arguments_that_do_not_fit_the_tools_schema_are_refused(step, needle):
    problems = problems_of(wf(step))
    assert sum(needle in p for p in problems) == 1, (needle, problems)


@pytest.mark.parametrize("args", [
    {"seconds": "{{ input.seconds }}"},                      # a template: checked when the step runs
    {"seconds": "{{ input.seconds }} and more"},
    {"seconds": 0.5},
    {},
], ids=["lone-template", "text-template", "a-number", "none"])
def test_arguments_that_fit_or_are_templates_pass(args):
    definitions.parse_definition(wf(tool("s", "sleep", args=args)))


def test_argument_problems_are_found_beside_a_refusal_by_the_schema():
    """A definition the schema refused (an unknown field) still has its steps' arguments checked."""
    problems = problems_of(wf(tool("s", "sleep", args={"seconds": "five"}), colour="red"))
    assert any(p.startswith("unknown field 'colour'") for p in problems), problems
    assert any(p.startswith("steps.0.args.seconds: the tool 'sleep' takes a number") for p in problems), problems


def test_a_tool_whose_schema_cannot_be_read_here_is_left_to_the_run_time_check():
    assert validation.literal_argument_problems("no.such.tool", {"x": 1}, "steps.0.args") == []


# --- the tool calls of a scripted agent: its script is the definition's text, checked as a tool step's args ---

REFUSED_SCRIPTED_CALLS = [
    pytest.param(scripted("ag", calls(("sleep", {"seconds": "five"}))),
                 "steps.0.script[0].tool_calls[0].args.seconds: the tool 'sleep' takes a number here, got \"five\"; "
                 "fix the value, or make it a template (checked when the step runs)", id="wrong-type"),
    pytest.param(scripted("ag", calls(("echo", {})), calls(("echo", {}), ("http.request", {"method": "GET"})),
                          tools=("echo", "http.request")),
                 "steps.0.script[1].tool_calls[1].args.url: the tool 'http.request' needs this argument; add it",
                 id="second-turn-second-call"),
    pytest.param(scripted("ag", calls(("fail", {"message": "{{ input.why }}", "until_attempt": 2.5})), tools=("fail",)),
                 "steps.0.script[0].tool_calls[0].args.until_attempt: the tool 'fail' takes an integer here, got 2.5",
                 id="literal-beside-a-template"),
    pytest.param(scripted("ag", {"tool_calls": [{"args": {"seconds": 1}}]}),
                 "steps.0.script[0].tool_calls[0].name: a scripted tool call needs the name of the tool it calls; add it",
                 id="no-name"),
]


@pytest.mark.parametrize(("step", "needle"), REFUSED_SCRIPTED_CALLS)
def test_a_scripted_agents_literal_call_arguments_that_do_not_fit_are_refused_naming_the_call(step, needle):
    problems = problems_of(wf(step))
    assert sum(needle in p for p in problems) == 1, (needle, problems)


@pytest.mark.parametrize("step", [
    scripted("ag", calls(("sleep", {"seconds": "{{ input.seconds }}"})), "done"),   # checked when rendered
    scripted("ag", calls(("sleep", {"seconds": 0.5}), ("human.ask", {"question": "ok?"})),
             tools=("sleep", "human.ask")),
    scripted("ag", calls(("sleep", {"seconds": "five"})), tools=("echo",)),   # not its tool: the agent is told
], ids=["template", "fitting", "a-tool-it-does-not-have"])
def test_scripted_calls_that_fit_are_templates_or_name_no_tool_of_the_step_pass(step):
    definitions.parse_definition(wf(step))


def test_a_scripted_call_problem_is_found_beside_a_refusal_by_the_schema():
    problems = problems_of(wf(scripted("ag", calls(("sleep", {"seconds": "five"}))), colour="red"))
    assert any(p.startswith("steps.0.script[0].tool_calls[0].args.seconds: the tool 'sleep'") for p in problems), \
        problems


# --- models ---

def test_an_unknown_model_is_refused_with_the_known_models_listed():
    problems = problems_of(wf(llm("a", model="gpt-5")))
    assert problems == ["steps.0.model: unknown model 'gpt-5'; known models: openai, openai/gpt-4o-mini, scripted "
                        "(or openai/<name> for another model of the OpenAI-compatible endpoint)"]


def test_a_model_without_its_provider_is_pointed_at_the_known_name():
    models = validation.models_of(Settings(openai_model="gpt-4o"))
    problems = problems_of(wf({"id": "a", "type": "agent", "model": "gpt-4o"}), models=models)
    assert problems[0].startswith("steps.0.model: unknown model 'gpt-4o' (did you mean 'openai/gpt-4o'?)"), problems


def test_without_a_model_list_any_model_of_a_known_provider_passes():
    for model in ("scripted", "openai", "openai/anything-new", "scripted/whatever"):
        definitions.parse_definition(wf(llm("a", model=model)), models=validation.models_of(Settings()))


def test_with_a_model_list_only_those_the_installation_knows_pass():
    settings = Settings(models=["openai/gpt-4o"], openai_model="gpt-4o-mini",
                        prices=PriceTable(models={"openai/gpt-4.1": {"tokens_in": 1}, "openai": {"tokens_in": 1}}))
    models = validation.models_of(settings)
    assert models.known() == ["openai", "openai/gpt-4.1", "openai/gpt-4o", "openai/gpt-4o-mini", "scripted"]
    for model in ("openai/gpt-4o", "openai/gpt-4.1", "openai/gpt-4o-mini", "openai", "scripted"):
        definitions.parse_definition(wf(llm("a", model=model)), models=models)
    problems = problems_of(wf(llm("a", model="openai/gpt-5")), models=models)
    assert problems == ["steps.0.model: model 'openai/gpt-5' is not one of this installation's models "
                        "(SWITCHYARD_MODELS); known models: openai, openai/gpt-4.1, openai/gpt-4o, openai/gpt-4o-mini, "
                        "scripted"]


def test_every_kind_of_problem_is_listed_at_once():
    problems = problems_of(wf(tool("a", "sleep", args={"seconds": "five"}),
                              llm("b", model="gpt-5", prompt="{{ steps.nope.output }}")))
    assert [p.split(":")[0] for p in problems] == ["steps.0.args.seconds", "steps.1.prompt", "steps.1.model"]


# --- at run time: invalid_arguments ---

def test_rendered_arguments_of_the_wrong_type_fail_the_step_with_invalid_arguments(make_ctx):
    step = tool("s", "sleep", args={"seconds": "{{ input.seconds }}"})
    ctx = make_ctx(step, template_context={"input": {"seconds": "five"}, "steps": {}})
    with pytest.raises(PermanentStepError) as caught:
        executors.execute(ctx)
    error = caught.value
    assert isinstance(error, InvalidArguments)
    assert (error.code, error.retryable) == ("invalid_arguments", False)
    assert error.message == ("the arguments of sleep do not fit its schema: seconds: the tool 'sleep' takes a number "
                             "here, got \"five\"; fix the step's args (or what its templates render)")
    assert error.details == {"tool": "sleep", "field": "seconds", "problems": [
        "seconds: the tool 'sleep' takes a number here, got \"five\""]}
    assert "tool_calls" not in ctx.usage and ctx.decisions == []  # refused before the policy and the call


def test_an_agent_is_told_its_call_had_invalid_arguments_and_goes_on(make_ctx):
    # Literal, the call is refused at publish; rendered from a template, it is checked when it is made.
    script = [{"tool_calls": [{"name": "sleep", "args": {"seconds": "{{ input.seconds }}"}}]}, "gave up sleeping"]
    ctx = make_ctx({"id": "ag", "type": "agent", "tools": ["sleep"], "script": script},
                   template_context={"input": {"seconds": "five"}, "steps": {}})
    result = agent.run(ctx)
    assert result["text"] == "gave up sleeping"
    assert result["tool_calls"][0]["result"]["code"] == "invalid_arguments"


def test_the_arguments_are_checked_once_before_the_policy_which_decides_on_calls_that_fit():
    """The schema is checked in one place (validation.check_arguments, from the tool executor): the policy
    does not check it again, nor answer a call that does not fit with a denial of its own."""
    sleep = registry.BUILTIN_SPECS["sleep"]
    with pytest.raises(InvalidArguments):
        validation.check_arguments(sleep, {"seconds": "five"})
    decision = decide(Policy(), sleep, {"seconds": "five"})
    assert (decision.decision, decision.rule) == ("allowed", "default")


def test_the_details_of_invalid_arguments_reach_the_steps_error_scrubbed_of_secrets(make_ctx):
    """What the worker records (tasks.run_executor): the error's details as the check said them, with
    every secret of the process masked there as in the message."""
    secret = "sk-a-provider-key-1234"
    step = tool("s", "sleep", args={"seconds": "{{ input.seconds }}"})
    ctx = make_ctx(step, template_context={"input": {"seconds": secret}, "steps": {}})
    ctx.settings = Settings(openai_api_key=secret)
    outcome = tasks.run_executor(ctx)
    error = outcome.error.as_json()
    assert error["code"] == "invalid_arguments" and secret not in str(error), error
    assert error["details"] == {"tool": "sleep", "field": "seconds", "problems": [
        "seconds: the tool 'sleep' takes a number here, got \"[redacted]\""]}
    assert ErrorInfo.of(InvalidArguments("no", {"field": "x"})).as_json()["details"] == {"field": "x"}
    assert "details" not in ErrorInfo.of(PermanentStepError("no")).as_json()


def test_a_tool_with_an_unreadable_schema_is_called_unchecked():
    validation.check_arguments(ToolSpec("odd", "low", {"type": "no-such-type"}), {"anything": 1})
    with pytest.raises(InvalidArguments):
        validation.check_arguments(ToolSpec("strict", "low", {"type": "object", "additionalProperties": False}),
                                   {"extra": 1})


def test_the_step_error_table_of_the_docs_is_the_openapi_documents():
    """docs/api.md's "Step errors" table and the StepError schema of the OpenAPI document list the same
    codes, retryable alike; invalid_arguments is one of them, not retryable."""
    from api import openapi

    doc = (Path(__file__).parents[2] / "docs" / "api.md").read_text()
    table = doc.split("## Step errors", 1)[1].split("\n\n")[2]
    rows = [line.split("|")[1:3] for line in table.splitlines() if line.startswith("| `") and "retryable |" not in line]
    documented = {code.strip(" `"): {"yes": True, "no": False, "depends": None}[again.strip()] for code, again in rows}
    assert documented == {code: again for code, (again, _) in openapi.STEP_ERRORS.items()}
    assert documented["invalid_arguments"] is False
    schema = openapi._step_error_schema()
    assert schema["properties"]["code"]["examples"] == list(openapi.STEP_ERRORS)
