"""What a definition must get right beyond its schema and graph, checked at publish — pure but for the
tool registry — and tool arguments checked at run time.

- Templates may read only the outputs of steps that are upstream (``{{ steps.nope.output }}`` names a step
  that is not in the workflow, or whose output would not exist yet); the same check as a ``when``
  expression's (templates.reference_problems).
- A `tool` step's literal arguments must fit the tool's argument schema (``"seconds": "five"``), and so
  must those of the tool calls an `agent` step's ``script`` writes (the scripted model's calls are the
  definition's text, rendered like a `tool` step's args); an argument that is a template is checked when
  the step runs, once it is rendered (``check_arguments``, which fails the step with ``invalid_arguments``,
  or tells the agent).
- A step's ``model`` must be one the installation knows (``Models``): a known provider, and one of
  ``SWITCHYARD_MODELS`` where that list is set.

Each problem names its field path (``steps.2.args.seconds: …``) and says what to do. Called from the
definition gate (orchestrator.definitions.semantic_problems).
"""

from __future__ import annotations

import difflib
import functools
import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import jsonschema

from orchestrator import dag, registry, templates
from orchestrator.errors import InvalidArguments
from orchestrator.policy import ToolSpec


@dataclass(frozen=True)
class Models:
    """The models this installation knows: ``listed`` (SWITCHYARD_MODELS; when set, an openai model must be
    one of them), the exact names in the price table, and the openai default."""

    listed: frozenset[str] = frozenset()
    priced: frozenset[str] = frozenset()
    default: str = "gpt-4o-mini"

    def known(self) -> list[str]:
        """Every model name a step may write, as the refusal lists them."""
        return sorted({*registry.MODEL_PROVIDERS, f"openai/{self.default}", *self.listed, *self.priced})

    def problem(self, model: str) -> str | None:
        """Why a step may not name ``model`` (None if it may)."""
        provider = model.partition("/")[0]
        if provider not in registry.MODEL_PROVIDERS:
            others = "" if self.listed else " (or openai/<name> for another model of the OpenAI-compatible endpoint)"
            return f"unknown model {model!r}{self._suggestion(model)}; known models: {', '.join(self.known())}{others}"
        if provider == "openai" and self.listed and model != "openai" and model not in self.known():
            return (f"model {model!r} is not one of this installation's models (SWITCHYARD_MODELS){self._suggestion(model)}; "
                    f"known models: {', '.join(self.known())}")
        return None

    def _suggestion(self, model: str) -> str:
        """" (did you mean 'openai/gpt-4o'?)" for a known model written without its provider or misspelt
        (compared without the provider, whose shared prefix would make every name look close)."""
        name = model.rpartition("/")[2]
        by_name = {known.rpartition("/")[2]: known for known in self.known()}
        close = difflib.get_close_matches(name, list(by_name), n=1, cutoff=0.8)
        return f" (did you mean {by_name[close[0]]!r}?)" if close and by_name[close[0]] != model else ""


def models_of(settings: Any) -> Models:
    """The models of an installation's settings (``models``, ``prices.models``, ``openai_model``)."""
    return Models(listed=frozenset(settings.models),
                  priced=frozenset(name for name in settings.prices.models if "/" in name),
                  default=settings.openai_model)


def definition_problems(definition: Any, *, models: Models | None = None,
                        not_templates: Collection[str] = ()) -> list[str]:
    """The problems of a parsed definition that its schema and graph do not show: templates naming steps
    that are not upstream, literal tool arguments that do not fit the tool's schema, unknown models.
    ``not_templates``: the step fields that are not templates. Empty if there are none."""
    step_ids = set(definition.steps_by_id)
    return [problem for index, step in enumerate(definition.steps)
            for problem in step_problems(index, step, upstream=dag.upstream(step.id, definition.needs),
                                         step_ids=step_ids, models=models, not_templates=not_templates)]


def step_problems(index: int, step: Any, *, upstream: set[str], step_ids: Collection[str],
                  models: Models | None = None, not_templates: Collection[str] = ()) -> list[str]:
    """``definition_problems`` of one step (at ``steps.{index}``), whose ``upstream`` steps are known;
    also for a step valid on its own in a definition the schema refused."""
    where = f"steps.{index}"
    problems = _template_problems(step.model_dump(exclude=set(not_templates)), where, upstream, set(step_ids))
    if step.type == "tool":
        problems += literal_argument_problems(step.tool, step.args, f"{where}.args")
    if step.type == "agent":
        problems += scripted_call_problems(step.script or [], step.tools, where)
    model = getattr(step, "model", None)
    problem = (models or Models()).problem(model) if isinstance(model, str) else None
    return problems + ([f"{where}.model: {problem}"] if problem else [])


def _template_problems(value: Any, where: str, upstream: set[str], step_ids: set[str]) -> list[str]:
    """Every template inside ``value`` that names a step it may not read."""
    if isinstance(value, str):
        tree = templates.parsed(value) if "{{" in value or "{%" in value else None
        return templates.reference_problems(tree, where, upstream, step_ids) if tree is not None else []
    if isinstance(value, Mapping):
        return [p for key, item in value.items() for p in _template_problems(item, f"{where}.{key}", upstream, step_ids)]
    if isinstance(value, list):
        return [p for i, item in enumerate(value) for p in _template_problems(item, f"{where}[{i}]", upstream, step_ids)]
    return []


# --- tool arguments --------------------------------------------------------------------------------

def literal_argument_problems(tool: str, args: Any, where: str) -> list[str]:
    """Why a tool call's arguments, as written (a `tool` step's or a scripted agent's), do not fit the
    tool's schema; a value that is a template (or holds one) is left to the run-time check. Empty for a
    tool whose schema cannot be read here."""
    spec = registry.declared_spec(tool)
    if spec is None:
        return []
    validator = _validator(spec.args_schema)
    if validator is None:
        return []
    problems = []
    for error in validator.iter_errors(args):
        if _templated(args, list(error.absolute_path), whole=error.validator not in _ABOUT_KEYS):
            continue
        problems += [f"{where}{_path(path)}: {text}" + ("; fix the value, or make it a template (checked when the step "
                                                          "runs)" if error.validator not in _ABOUT_KEYS else "")
                     for path, text in _said(error, tool)]
    return list(dict.fromkeys(problems))


def scripted_call_problems(script: list, tools: Collection[str], where: str) -> list[str]:
    """Why the tool calls an agent's ``script`` writes would fail: a call without the name of its tool,
    or literal arguments that do not fit the tool's schema (``steps.1.script[0].tool_calls[0].args.seconds:
    …``, as ``literal_argument_problems`` says it). A call of a tool the step does not list is not checked:
    the agent is told it has no such tool, which a script may mean to show."""
    problems = []
    for turn, entry in enumerate(script):
        for i, call in enumerate(getattr(entry, "tool_calls", [])):
            at = f"{where}.script[{turn}].tool_calls[{i}]"
            name = call.get("name")
            if not isinstance(name, str) or not name:
                problems.append(f"{at}.name: a scripted tool call needs the name of the tool it calls; add it")
            elif name in tools:
                problems += literal_argument_problems(name, call.get("args") or {}, f"{at}.args")
    return problems


def check_arguments(spec: ToolSpec, args: Any) -> None:
    """Raise InvalidArguments (the step error ``invalid_arguments``, not retryable) if ``args``, as rendered,
    do not fit the tool's argument schema; a tool whose schema is not a valid JSON Schema is not checked."""
    validator = _validator(spec.args_schema)
    if validator is None:
        return
    said = [(path, text) for error in validator.iter_errors(args) for path, text in _said(error, spec.name)]
    if said:
        problems = list(dict.fromkeys(f"{_path(path).lstrip('.') or 'args'}: {text}" for path, text in said))
        raise InvalidArguments(f"the arguments of {spec.name} do not fit its schema: {'; '.join(problems)}; fix the "
                               f"step's args (or what its templates render)",
                               details={"tool": spec.name, "field": _path(said[0][0]).lstrip(".") or "args",
                                        "problems": problems})


# Schema keywords about an object's keys, which are always literal: their errors stand even where the
# object holds templates.
_ABOUT_KEYS = ("required", "additionalProperties", "propertyNames", "minProperties", "maxProperties")


def _templated(args: Any, path: list, whole: bool) -> bool:
    """Whether the value at ``path`` comes from a template: a template string on the way to it, or (with
    ``whole``) anywhere inside it."""
    value = args
    for part in path:
        if _is_template(value):
            return True
        try:
            value = value[part]
        except (KeyError, IndexError, TypeError):
            return False
    return _holds_template(value) if whole else _is_template(value)


def _is_template(value: Any) -> bool:
    return isinstance(value, str) and ("{{" in value or "{%" in value)


def _holds_template(value: Any) -> bool:
    if isinstance(value, dict):
        return any(_holds_template(v) for v in value.values())
    if isinstance(value, list):
        return any(_holds_template(v) for v in value)
    return _is_template(value)


_NOUNS = {"number": "a number", "integer": "an integer", "string": "a string", "boolean": "true or false",
          "object": "an object", "array": "a list", "null": "null"}


def _said(error: jsonschema.ValidationError, tool: str) -> list[tuple[list, str]]:
    """A schema error as (the path of the argument it is about, a plain sentence)."""
    path, value = list(error.absolute_path), error.instance
    if error.validator == "type":
        kinds = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
        wanted = " or ".join(_NOUNS.get(k, k) for k in kinds)
        return [(path, f"the tool {tool!r} takes {wanted} here, got {_shown(value)}")]
    if error.validator == "required" and isinstance(value, dict):
        return [(path + [name], f"the tool {tool!r} needs this argument; add it")
                for name in error.validator_value if name not in value]
    if error.validator == "additionalProperties" and isinstance(value, dict):
        known = sorted(error.schema.get("properties") or {})
        return [(path + [name], f"the tool {tool!r} takes no argument {name!r}; it takes {', '.join(known) or 'none'}")
                for name in value if name not in known]
    if error.validator == "enum":
        return [(path, f"the tool {tool!r} takes one of {', '.join(map(_shown, error.validator_value))} here, "
                       f"got {_shown(value)}")]
    return [(path, f"{error.message} (the argument schema of the tool {tool!r})")]


def _path(parts: list) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts)


def _shown(value: Any) -> str:
    shown = json.dumps(value, default=str)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def _validator(schema: Any) -> jsonschema.protocols.Validator | None:
    """The validator of a tool's schema, built once per schema; None if it is not a valid JSON Schema."""
    try:
        return _compiled(json.dumps(schema, sort_keys=True))
    except (jsonschema.SchemaError, TypeError, ValueError):
        return None


@functools.lru_cache(maxsize=256)
def _compiled(schema_json: str) -> jsonschema.protocols.Validator:
    schema = json.loads(schema_json)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)
