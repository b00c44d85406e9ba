"""Templates (``{{ … }}``) in step fields, rendered in Jinja2's immutable sandbox.

A template that names a Python internal outright (``x.__class__``, ``x['__y__']``, ``x|attr('__z')``)
is refused at publish; one that reaches for it by a computed name is stopped by the sandbox when it
renders, which fails the step with a permanent ``template_error``.
"""

from __future__ import annotations

import functools
from collections.abc import Collection
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, Undefined, meta, nodes
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
                problems.extend(f"{where}: {p}" for p in _internals(_env.parse(value)))
            except TemplateSyntaxError as exc:
                problems.append(f"{where}: template syntax error: {exc.message}")
    elif isinstance(value, dict):
        for key, item in value.items():
            problems.extend(syntax_problems(item, f"{where}.{key}"))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            problems.extend(syntax_problems(item, f"{where}[{i}]"))
    return problems


def _internals(tree: nodes.Template) -> list[str]:
    """Python internals the template names outright: dunder names (``__class__``) and mangled private
    names (``_TemplateReference__context``). A data key like ``_id`` is not one."""
    found = []
    for node in tree.find_all((nodes.Getattr, nodes.Getitem, nodes.Filter)):
        if isinstance(node, nodes.Getattr):
            name = node.attr
        elif isinstance(node, nodes.Getitem):
            name = node.arg.value if isinstance(node.arg, nodes.Const) else None
        else:
            name = node.args[0].value if node.name == "attr" and node.args and isinstance(node.args[0], nodes.Const) \
                else None
        if isinstance(name, str) and name.startswith("_") and "__" in name:
            found.append(f"template reaches for the Python internal {name!r}; templates may only read data")
    return found


def expression_problems(expression: str, where: str, upstream: set[str],
                        step_ids: Collection[str] | None = None) -> list[str]:
    """Why a step's ``when`` expression is refused at publish: it does not parse, reaches for a Python
    internal, or reads ``steps.<id>`` of a step that is not upstream of it (its output would not exist)
    or, with ``step_ids``, not in the workflow at all."""
    try:
        tree = _env.parse("{{ (" + expression + ") }}")
    except TemplateSyntaxError as exc:
        return [f"{where}: expression syntax error: {exc.message}"]
    return [f"{where}: {p}" for p in _internals(tree)] + reference_problems(tree, where, upstream, step_ids)


@functools.lru_cache(maxsize=4096)
def parsed(text: str) -> nodes.Template | None:
    """The syntax tree of a template, or None if it does not parse (syntax_problems reports that); kept
    for the next publish of the same text (callers only read it)."""
    try:
        return _env.parse(text)
    except TemplateSyntaxError:
        return None


def reference_problems(tree: nodes.Template, where: str, upstream: set[str],
                       step_ids: Collection[str] | None = None) -> list[str]:
    """Why a parsed template or expression may not read the steps it names (``steps.<id>``,
    ``steps['<id>']``): the step is not in the workflow (when ``step_ids`` are given), or it is not
    upstream of the step the template belongs to, so its output would not exist when it renders."""
    problems = []
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        if isinstance(node.node, nodes.Name) and node.node.name == "steps":
            name = node.attr if isinstance(node, nodes.Getattr) else getattr(node.arg, "value", None)
            if not isinstance(name, str) or name in upstream:
                continue
            if step_ids is not None and name not in step_ids:
                problems.append(f"{where}: names step {name!r}, which is not a step of this workflow; "
                                f"use one of {sorted(step_ids)}")
            else:
                problems.append(f"{where}: names step {name!r}, which is not upstream of this step "
                                f"(add it to needs, directly or through another step)")
    return problems


def evaluate(expression: str, context: dict[str, Any]) -> Any:
    """The value of a ``when`` expression in ``context``; PermanentStepError (template_error) if it fails."""
    try:
        return _compiled(expression)(**context)
    except Exception as exc:  # noqa: BLE001 - as for render(): the definition's fault
        raise PermanentStepError(f"expression {expression!r} failed: {type(exc).__name__}: {exc}",
                                 code="template_error") from exc


@functools.lru_cache(maxsize=1024)
def _compiled(expression: str):
    return _env.compile_expression(expression, undefined_to_none=False)


def _lone_expression(value: str) -> str | None:
    """The expression of a string that is one ``{{ … }}`` and nothing else, else None."""
    text = value.strip()
    if not (text.startswith("{{") and text.endswith("}}")) or "{%" in text:
        return None
    inner = text[2:-2]
    return None if "{{" in inner or "}}" in inner else inner


def render(value: Any, context: dict[str, Any]) -> Any:
    """Render every string inside ``value``; other JSON values pass through unchanged. A string that is
    one ``{{ … }}`` and nothing else takes the value of its expression with its type (a number, a
    list, an object), so ``"{{ steps.fetch.output.ids }}"`` passes a list on; any other template
    renders to a string."""
    if isinstance(value, str):
        if "{{" not in value and "{%" not in value:
            return value
        expression = _lone_expression(value)
        if expression is not None:
            return _json_value(evaluate(expression, context), value)
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


def _json_value(result: Any, template: str) -> Any:
    """An expression's value as JSON holds it (a tuple as a list, a string subclass as a string)."""
    if isinstance(result, Undefined):  # what the sandbox left of an unsafe or missing name: its error
        try:
            str(result)
        except Exception as exc:  # noqa: BLE001 - as for render()
            raise PermanentStepError(f"template {template!r} failed: {type(exc).__name__}: {exc}",
                                     code="template_error") from exc
    if result is None or isinstance(result, bool | int | float):
        return result
    if isinstance(result, str):
        return str(result)
    if isinstance(result, list | tuple):
        return [_json_value(item, template) for item in result]
    if isinstance(result, dict):
        return {str(key): _json_value(item, template) for key, item in result.items()}
    raise PermanentStepError(f"template {template!r} gave a {type(result).__name__}, which is not a JSON value",
                             code="template_error")


def referenced_names(value: Any) -> frozenset[str]:
    """The top-level names (``input``, ``steps``, ``approval``, …) the templates inside ``value`` read,
    so a worker loads only the part of the run they need."""
    if isinstance(value, str):
        return _names_in(value) if "{{" in value or "{%" in value else frozenset()
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        return frozenset().union(*(referenced_names(item) for item in value))
    return frozenset()


@functools.lru_cache(maxsize=4096)
def _names_in(template: str) -> frozenset[str]:
    try:
        return frozenset(meta.find_undeclared_variables(_env.parse(template)))
    except TemplateSyntaxError:
        return frozenset(("input", "steps", "run", "approval", "attempt"))  # render() reports the error


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
