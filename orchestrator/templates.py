"""Templates (``{{ … }}``) in step fields, rendered in Jinja2's immutable sandbox.

The sandbox refuses attribute access to Python internals, so a definition cannot reach them;
such an attempt fails the step with a permanent ``template_error``.
"""

from __future__ import annotations

from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from orchestrator.errors import PermanentStepError

_env = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False)

# Before any approval was decided, ``approval.comment`` is None rather than undefined, so a template
# can say ``{% if approval.comment %}`` on its first round.
NO_APPROVAL = {"id": None, "step_id": None, "status": None, "comment": None, "round": 0}


def syntax_problems(value: Any, where: str) -> list[str]:
    """Template syntax errors anywhere inside ``value`` (strings, lists, dicts), for validation at publish."""
    problems: list[str] = []
    if isinstance(value, str):
        if "{{" in value or "{%" in value:
            try:
                _env.parse(value)
            except TemplateSyntaxError as exc:
                problems.append(f"{where}: template syntax error: {exc.message}")
    elif isinstance(value, dict):
        for key, item in value.items():
            problems.extend(syntax_problems(item, f"{where}.{key}"))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            problems.extend(syntax_problems(item, f"{where}[{i}]"))
    return problems


def render(value: Any, context: dict[str, Any]) -> Any:
    """Render every string inside ``value``; other JSON values pass through unchanged."""
    if isinstance(value, str):
        if "{{" not in value and "{%" not in value:
            return value
        try:
            return _env.from_string(value).render(context)
        except Exception as exc:  # noqa: BLE001 - any error in a template (undefined, 1/0, 'a' + 1) is
            # the definition's fault: retrying cannot cure it.
            raise PermanentStepError(f"template {value!r} failed: {type(exc).__name__}: {exc}",
                                     code="template_error") from exc
    if isinstance(value, dict):
        return {key: render(item, context) for key, item in value.items()}
    if isinstance(value, list):
        return [render(item, context) for item in value]
    return value


def run_context(
    run_input: Any,
    outputs: dict[str, Any],
    run: dict[str, Any],
    approval: dict[str, Any] | None = None,
    attempt: int | None = None,
) -> dict[str, Any]:
    """What templates see: ``input``, ``steps.<id>.output``, ``run``, ``approval`` and ``attempt``."""
    return {
        "input": run_input,
        "steps": {step_id: {"output": output} for step_id, output in outputs.items()},
        "run": run,
        "approval": approval or NO_APPROVAL,
        "attempt": attempt,
    }
