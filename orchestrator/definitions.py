"""The workflow definition schema and its validation.

``parse_definition`` is the one gate a definition passes before it is stored: structure (pydantic),
graph (dag.graph_problems), tool names, the input schema (jsonschema's meta-schema) and template
syntax. It collects every problem so the 400 names them all at once.
"""

from __future__ import annotations

from functools import cached_property
from typing import Annotated, Any, Literal

import jsonschema
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, TypeAdapter, ValidationError

from orchestrator import dag, registry, templates
from orchestrator.errors import DefinitionInvalid
from orchestrator.policy import Policy
from orchestrator.retry import RetryPolicy

STEP_ID_PATTERN = r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$"
STEP_TYPES = ("tool", "llm", "agent", "approval", "question", "wait_event", "timer")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RetrySpec(_Strict):
    max_attempts: int = Field(default=3, ge=1, le=100)
    backoff: Literal["exponential", "fixed"] = "exponential"
    initial_delay_s: float = Field(default=1.0, ge=0, le=3600)
    max_delay_s: float = Field(default=60.0, ge=0, le=86400)
    jitter: bool = True

    def policy(self) -> RetryPolicy:
        return RetryPolicy(**self.model_dump())


class Defaults(_Strict):
    retry: RetrySpec = RetrySpec()
    timeout_s: float = Field(default=300, gt=0, le=7 * 86400)


class _StepBase(_Strict):
    id: str = Field(pattern=STEP_ID_PATTERN)
    needs: list[str] = []
    retry: RetrySpec | None = None
    timeout_s: float | None = Field(default=None, gt=0, le=7 * 86400)
    queue: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.:-]{1,100}$")
    description: str | None = None


class ToolStep(_StepBase):
    type: Literal["tool"]
    tool: str
    args: dict[str, Any] = {}


class ScriptedTurn(_Strict):
    """One reply of the scripted model: text, tool calls, or both."""

    content: str | None = None
    tool_calls: list[dict[str, Any]] = []
    tokens_in: int | None = None
    tokens_out: int | None = None


ScriptEntry = str | ScriptedTurn


class LlmStep(_StepBase):
    type: Literal["llm"]
    model: str = "scripted"
    prompt: str
    system: str | None = None
    script: list[ScriptEntry] | None = None


class AgentStep(_StepBase):
    type: Literal["agent"]
    model: str = "scripted"
    prompt: str = "{{ input }}"
    system: str | None = None
    tools: list[str] = []
    max_turns: int = Field(default=8, ge=1, le=100)
    script: list[ScriptEntry] | None = None


class ApprovalStep(_StepBase):
    type: Literal["approval"]
    prompt: str | None = None
    max_rounds: int = Field(default=3, ge=1, le=20)


class QuestionStep(_StepBase):
    type: Literal["question"]
    question: str = "?"


class WaitEventStep(_StepBase):
    type: Literal["wait_event"]
    correlation_key: str
    event_name: str | None = None


class TimerStep(_StepBase):
    type: Literal["timer"]
    duration_s: float = Field(ge=0, le=365 * 86400)


Step = Annotated[
    ToolStep | LlmStep | AgentStep | ApprovalStep | QuestionStep | WaitEventStep | TimerStep,
    Field(discriminator="type"),
]


class Definition(_Strict):
    name: str = Field(min_length=1, max_length=200)
    kind: Literal["workflow", "conversational"] = "workflow"
    description: str | None = None
    input_schema: dict[str, Any] | None = None
    defaults: Defaults = Defaults()
    # What tool calls may do, as data (orchestrator/policy.py); the default allows every call.
    policy: Policy = Policy()
    steps: list[Step] = Field(min_length=1)
    # Per step, the names its templates read; a definition is immutable, so it is worked out once.
    _template_names: dict[str, frozenset[str]] = PrivateAttr(default_factory=dict)

    # A definition is frozen, so what is derived from its steps is computed once (the scheduler asks
    # for it for every run of every pass). Callers must not change what these return.
    @cached_property
    def steps_by_id(self) -> dict[str, Step]:
        return {s.id: s for s in self.steps}

    def step(self, step_id: str) -> Step:
        return self.steps_by_id[step_id]

    @cached_property
    def needs(self) -> dict[str, list[str]]:
        return {s.id: list(s.needs) for s in self.steps}

    @cached_property
    def dependents(self) -> dict[str, list[str]]:
        """For each step, the steps that need it."""
        return dag.dependents([s.id for s in self.steps], self.needs)

    @cached_property
    def sinks(self) -> list[str]:
        """The steps nothing else needs: their outputs make the run's output."""
        return dag.sink_steps([s.id for s in self.steps], self.needs)

    def template_names(self, step_id: str) -> frozenset[str]:
        """The top-level names (``steps``, ``approval``, …) that the step's templates read."""
        if step_id not in self._template_names:
            fields = self.step(step_id).model_dump(exclude={"id", "type", "needs"})
            self._template_names[step_id] = templates.referenced_names(fields)
        return self._template_names[step_id]

    def retry_policy(self, step: Step) -> RetryPolicy:
        return (step.retry or self.defaults.retry).policy()

    def timeout_s(self, step: Step) -> float:
        return step.timeout_s or self.defaults.timeout_s


_definition_adapter = TypeAdapter(Definition)


def _pydantic_problems(exc: ValidationError) -> list[str]:
    problems = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(p) for p in err["loc"]) or "definition"
        if err["type"] == "union_tag_invalid":
            problems.append(f"{where}: unknown step type {err['input'].get('type')!r}; use one of {list(STEP_TYPES)}")
        elif err["type"] == "union_tag_not_found":
            problems.append(f"{where}: a step needs a 'type', one of {list(STEP_TYPES)}")
        else:
            problems.append(f"{where}: {err['msg']}")
    return problems


def parse_definition(raw: Any, max_steps: int = 1000) -> Definition:
    """Validate a definition as sent by a client; raise DefinitionInvalid listing every problem."""
    if not isinstance(raw, dict):
        raise DefinitionInvalid("the definition must be a JSON object", {"problems": ["not an object"]})
    try:
        definition = _definition_adapter.validate_python(raw)
    except ValidationError as exc:
        problems = _pydantic_problems(exc)
        raise DefinitionInvalid("invalid workflow definition: " + "; ".join(problems), {"problems": problems}) from None
    problems = semantic_problems(definition, max_steps)
    if problems:
        raise DefinitionInvalid("invalid workflow definition: " + "; ".join(problems), {"problems": problems})
    return definition


def semantic_problems(definition: Definition, max_steps: int) -> list[str]:
    """What the schema alone cannot see: the graph, tool names, the input schema, template syntax."""
    problems: list[str] = []
    if len(definition.steps) > max_steps:
        problems.append(f"steps: {len(definition.steps)} steps is over the limit of {max_steps}")
    problems += dag.graph_problems([s.id for s in definition.steps], definition.needs)
    known = registry.known_tools()
    for i, step in enumerate(definition.steps):
        if isinstance(step, ToolStep) and step.tool not in known:
            problems.append(f"steps.{i}.tool: unknown tool {step.tool!r}; known tools: {sorted(known)}")
        if isinstance(step, AgentStep):
            for name in step.tools:
                if name not in known | registry.AGENT_ONLY_TOOLS:
                    problems.append(f"steps.{i}.tools: unknown tool {name!r}; known tools: {sorted(known)}")
        problems += templates.syntax_problems(step.model_dump(exclude={"id", "type", "needs"}), f"steps.{i}")
    for i, rule in enumerate(definition.policy.rules):
        if rule.tool is not None and rule.tool not in known | registry.AGENT_ONLY_TOOLS:
            problems.append(f"policy.rules.{i}.tool: unknown tool {rule.tool!r}; known tools: {sorted(known)}")
    if definition.input_schema is not None:
        try:
            jsonschema.Draft202012Validator.check_schema(definition.input_schema)
        except jsonschema.SchemaError as exc:
            problems.append(f"input_schema: not a valid JSON Schema: {exc.message}")
    return problems


def input_problems(definition: Definition, value: Any) -> list[str]:
    """Why ``value`` fails the workflow's input_schema (empty if it passes or there is none)."""
    if definition.input_schema is None:
        return []
    validator = jsonschema.Draft202012Validator(definition.input_schema)
    return [
        f"input{''.join(f'[{p!r}]' for p in err.absolute_path)}: {err.message}"
        for err in sorted(validator.iter_errors(value), key=lambda e: list(e.absolute_path))
    ]
