"""The workflow definition schema and its validation.

``parse_definition`` is the one gate a definition passes before it is stored: structure (pydantic),
graph (dag.graph_problems), each step type's own checks (tool names), the input schema (jsonschema's
meta-schema) and template syntax. It collects every problem, each once, so the 400 names them all at
once; a definition the schema refuses still gets the other checks on what can be read
(``_salvaged_problems``).

The step models live with their types in orchestrator.steptypes; ``Step`` is the union of the
registered ones, and registering a type later makes ``Definition`` accept it.
"""

from __future__ import annotations

from functools import cached_property
from typing import Annotated, Any, Literal, Union

import jsonschema
from pydantic import Field, PrivateAttr, ValidationError
from pydantic.fields import FieldInfo

from orchestrator import dag, registry, steptypes, templates, validation, wording
from orchestrator import triggers as event_triggers
from orchestrator.errors import DefinitionInvalid
from orchestrator.policy import Policy
from orchestrator.retry import RetryPolicy
from orchestrator.steptypes.agent import AgentStep
from orchestrator.steptypes.approval import ApprovalStep
from orchestrator.steptypes.fields import (
    STEP_ID_PATTERN,
    Concurrency,
    RetrySpec,
    ScriptedTurn,
    ScriptEntry,
    StepFields,
    StrictModel,
)
from orchestrator.steptypes.llm import LlmStep
from orchestrator.steptypes.question import QuestionStep
from orchestrator.steptypes.timer import TimerStep
from orchestrator.steptypes.tool import ToolStep
from orchestrator.steptypes.wait_event import WaitEventStep

__all__ = [
    "STEP_ID_PATTERN", "STEP_TYPES", "AgentStep", "ApprovalStep", "Concurrency", "Defaults", "Definition", "LlmStep",
    "QuestionStep", "RetrySpec", "ScriptEntry", "ScriptedTurn", "Step", "TimerStep", "ToolStep",
    "WaitEventStep", "StepFields", "input_problems", "parse_definition", "semantic_problems",
]


class Defaults(StrictModel):
    retry: RetrySpec = RetrySpec()
    timeout_s: float = Field(default=300, gt=0, le=7 * 86400)


def _step_union() -> Any:
    """The discriminated union of the registered types' definition models."""
    models = tuple(t.definition for t in steptypes.types())
    if len(models) == 1:  # a union of one is the model itself, and takes no discriminator
        return models[0]
    return Annotated[Union[models], Field(discriminator="type")]  # noqa: UP007 - X | Y cannot take a tuple


# Rebuilt by _rebuild whenever a step type is registered or unregistered.
STEP_TYPES: tuple[str, ...] = steptypes.names()
Step = _step_union()


class Definition(StrictModel):
    name: str = Field(min_length=1, max_length=200)
    kind: Literal["workflow", "conversational"] = "workflow"
    description: str | None = None
    input_schema: dict[str, Any] | None = None
    defaults: Defaults = Defaults()
    # What tool calls may do, as data (orchestrator/policy.py); the default allows every call.
    policy: Policy = Policy()
    # Replaced by _rebuild with the union of the registered types.
    steps: list[Step] = Field(min_length=1)
    # Events that start a run (orchestrator/triggers.py), and how long its terminal runs are kept
    # (days; 0 keeps them; null: SWITCHYARD_RETENTION_DAYS).
    triggers: list[event_triggers.Trigger] = Field(default_factory=list, max_length=100)
    retention_days: int | None = Field(default=None, ge=0, le=36500)
    # Flow control (docs/flow-control.md): the runs' default priority (1 first, 9 last).
    priority: int = Field(default=5, ge=1, le=9)
    # At most `limit` active runs of this workflow per key rendered from the run's input (core.concurrency).
    concurrency: Concurrency | Annotated[list[Concurrency], Field(min_length=1, max_length=10)] | None = None
    # Per step, the names its templates read; a definition is immutable, so it is worked out once.
    _template_names: dict[str, frozenset[str]] = PrivateAttr(default_factory=dict)

    # A definition is frozen, so what is derived from its steps is computed once (the scheduler asks
    # for it for every run of every pass). Callers must not change what these return.
    @cached_property
    def steps_by_id(self) -> dict[str, Step]:
        return {s.id: s for s in self.steps}

    def step(self, step_id: str) -> Step:
        """The step ``step_id``; a for-each item's id (``<step>[<index>]``) names its step's definition."""
        found = self.steps_by_id.get(step_id)
        if found is None and step_id.endswith("]"):
            return self.steps_by_id[step_id[:step_id.rindex("[")]]
        if found is None:
            raise KeyError(step_id)
        return found

    @cached_property
    def concurrency_keys(self) -> tuple[Concurrency, ...]:
        """The workflow-level concurrency keys, as a tuple (the field takes one or a list)."""
        if self.concurrency is None:
            return ()
        return tuple(self.concurrency) if isinstance(self.concurrency, list) else (self.concurrency,)

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
            fields = self.step(step_id).model_dump(exclude=set(_NOT_TEMPLATES))
            self._template_names[step_id] = templates.referenced_names(fields)
        return self._template_names[step_id]

    def retry_policy(self, step: Step) -> RetryPolicy:
        return (step.retry or self.defaults.retry).policy()

    def timeout_s(self, step: Step) -> float:
        return step.timeout_s or self.defaults.timeout_s


def _rebuild() -> None:
    """Make Definition accept exactly the registered step types.

    pydantic keeps a complete model's fields as they were collected, so a forced rebuild alone would
    keep the old union: the field itself is replaced first.
    """
    global STEP_TYPES, Step
    STEP_TYPES, Step = steptypes.names(), _step_union()
    Definition.model_fields["steps"] = FieldInfo.from_annotated_attribute(list[Step], Field(min_length=1))
    Definition.model_rebuild(force=True)


steptypes.on_change(_rebuild)


def parse_definition(raw: Any, max_steps: int = 1000, *, models: validation.Models | None = None) -> Definition:
    """Validate a definition as sent by a client; raise DefinitionInvalid listing every problem, once.
    ``models``: the installation's (validation.models_of(settings)); default: any model of a known provider."""
    if not isinstance(raw, dict):
        raise DefinitionInvalid("the definition must be a JSON object", {"problems": ["the definition must be a "
                                                                                    "JSON object"]})
    try:
        definition = Definition.model_validate(raw)
    except ValidationError as exc:
        # One step the schema refuses (an unknown type, say) must not hide the other steps' problems.
        problems = [p.message for p in wording.problems(exc, Definition)] + _salvaged_problems(raw, max_steps, models)
    else:
        problems = semantic_problems(definition, max_steps, models=models)
    problems = list(dict.fromkeys(problems))  # e.g. a need named twice is one problem
    if problems:
        raise DefinitionInvalid("invalid workflow definition: " + "; ".join(problems), {"problems": problems})
    return definition


def semantic_problems(definition: Definition, max_steps: int, *, models: validation.Models | None = None) -> list[str]:
    """What the schema alone cannot see: the graph, tool names, the input schema, template syntax, and
    (orchestrator.validation) the steps templates name, literal tool arguments and models."""
    problems = _size_problems(len(definition.steps), max_steps)
    problems += dag.graph_problems([s.id for s in definition.steps], definition.needs)
    known = registry.known_tools()
    for i, step in enumerate(definition.steps):
        problems += _step_problems(i, step, known)
        if step.when is not None:
            problems += templates.expression_problems(step.when, f"steps.{i}.when",
                                                      dag.upstream(step.id, definition.needs), definition.steps_by_id)
        problems += _for_each_problems(i, step, dag.upstream(step.id, definition.needs))
    problems += event_triggers.problems(definition.triggers)
    problems += validation.definition_problems(definition, models=models, not_templates=_NOT_TEMPLATES)
    problems += _concurrency_problems(definition)
    return problems + _policy_problems(definition.policy, known) + _schema_problems(definition.input_schema)


def _concurrency_problems(definition: Definition) -> list[str]:
    """A workflow's keys render over the run's input alone (before any step ran); a step's key is for
    a step that holds a worker, one attempt at a time (a for-each step's items have max_parallel)."""
    problems = []
    for i, spec in enumerate(definition.concurrency_keys):
        where = f"concurrency.{i}.key" if isinstance(definition.concurrency, list) else "concurrency.key"
        problems += templates.syntax_problems(spec.key, where)
        other = sorted(templates.referenced_names(spec.key) - {"input"})
        if other:
            problems.append(f"{where}: a workflow's concurrency key is rendered from the run's input before any "
                            f"step runs, so it may read only 'input', not {other}")
    for i, step in enumerate(definition.steps):
        if step.concurrency is None:
            continue
        if steptypes.get(step.type).waits_on is not None or step.type == "workflow":
            problems.append(f"steps.{i}.concurrency: a {step.type!r} step holds no worker; a step's concurrency "
                            "key applies to tool, llm and agent steps (set a workflow's `concurrency` to limit "
                            "whole runs)")
        elif step.for_each is not None:
            problems.append(f"steps.{i}.concurrency: a for_each step cannot take a concurrency key; bound its "
                            "items with max_parallel")
    return problems


# The step types a for-each may run: those that run on a worker, and `workflow` (a map over child runs);
# a waiting type waits once, not per item.
FOR_EACH_TYPES = frozenset({"tool", "llm", "agent", "workflow"})


def _for_each_problems(index: int, step: Any, upstream: set[str]) -> list[str]:
    where = f"steps.{index}"
    if step.for_each is None:
        return [f"{where}.{name}: only a step with for_each may set it" for name in ("max_parallel", "min_succeeded")
                if getattr(step, name) is not None]
    if step.type not in FOR_EACH_TYPES:
        return [f"{where}.for_each: a {step.type!r} step cannot run for each item; for_each applies to "
                f"{', '.join(sorted(FOR_EACH_TYPES))} steps"]
    return templates.expression_problems(step.for_each, f"{where}.for_each", upstream)


def _salvaged_problems(raw: dict, max_steps: int, models: validation.Models | None) -> list[str]:
    """The semantic checks of what can still be read from a definition the schema refused.

    The graph takes every step with a string id (a step the schema refused can still be needed);
    a step valid on its own gets its type's checks and template syntax, one of a known type that is
    not valid gets template syntax only; the policy and input schema are checked if they are valid.
    """
    steps = raw.get("steps") if isinstance(raw.get("steps"), list) else []
    problems = _size_problems(len(steps), max_steps)
    step_ids: list[str] = []
    needs: dict[str, list[str]] = {}
    for item in steps:
        if isinstance(item, dict) and isinstance(item.get("id"), str):
            step_ids.append(item["id"])
            named = item.get("needs", [])
            if isinstance(named, list) and all(isinstance(n, str) for n in named):
                needs[item["id"]] = named
    problems += dag.graph_problems(step_ids, needs)
    known = registry.known_tools()
    for i, item in enumerate(steps):
        kind = item.get("type") if isinstance(item, dict) else None
        step_type = steptypes.find(kind) if isinstance(kind, str) else None
        if step_type is None:
            continue
        try:
            step = step_type.definition.model_validate(item)
        except ValidationError:
            problems += templates.syntax_problems({k: v for k, v in item.items() if k not in _NOT_TEMPLATES},
                                                  f"steps.{i}")
        else:
            problems += _step_problems(i, step, known)
            problems += validation.step_problems(i, step, upstream=dag.upstream(step.id, needs), step_ids=step_ids,
                                                 models=models, not_templates=_NOT_TEMPLATES)
    if isinstance(raw.get("policy"), dict):
        try:
            problems += _policy_problems(Policy.model_validate(raw["policy"]), known)
        except ValidationError:
            pass
    if isinstance(raw.get("input_schema"), dict):
        problems += _schema_problems(raw["input_schema"])
    return problems


# A step's fields that are not templates: the rest is checked for template syntax.
_NOT_TEMPLATES = frozenset({"id", "type", "needs", "when", "join", "on_failure", "for_each", "max_parallel",
                            "min_succeeded"})


def _size_problems(count: int, max_steps: int) -> list[str]:
    return [f"steps: {count} steps is over the limit of {max_steps}"] if count > max_steps else []


def _step_problems(index: int, step: Any, known: frozenset[str]) -> list[str]:
    """A valid step's own checks (its type's, e.g. tool names) and its templates' syntax."""
    return (steptypes.get(step.type).problems(step, index, known)
            + templates.syntax_problems(step.model_dump(exclude=set(_NOT_TEMPLATES)), f"steps.{index}"))


def _policy_problems(policy: Policy, known: frozenset[str]) -> list[str]:
    return [f"policy.rules.{i}.tool: unknown tool {rule.tool!r}; known tools: {sorted(known)}"
            for i, rule in enumerate(policy.rules)
            if rule.tool is not None and rule.tool not in known | registry.AGENT_ONLY_TOOLS]


def _schema_problems(input_schema: dict[str, Any] | None) -> list[str]:
    if input_schema is None:
        return []
    try:
        jsonschema.Draft202012Validator.check_schema(input_schema)
    except jsonschema.SchemaError as exc:
        return [f"input_schema: not a valid JSON Schema: {exc.message}"]
    return []


def input_problems(definition: Definition, value: Any,
                   validator: jsonschema.Draft202012Validator | None = None) -> list[str]:
    """Why ``value`` fails the workflow's input_schema (empty if it passes or there is none);
    ``validator``: the schema's, compiled already (catalog.DefinitionCatalog.input_validator)."""
    if definition.input_schema is None:
        return []
    validator = validator or jsonschema.Draft202012Validator(definition.input_schema)
    return [
        f"input{''.join(f'[{p!r}]' for p in err.absolute_path)}: {err.message}"
        for err in sorted(validator.iter_errors(value), key=lambda e: list(e.absolute_path))
    ]
