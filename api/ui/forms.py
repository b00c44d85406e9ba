"""A run's start form generated from a workflow's input schema (JSON Schema) — pure."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

import jsonschema


@dataclass(frozen=True)
class Field:
    name: str
    kind: str  # string, integer, number, boolean, enum or json (objects, arrays, anything else)
    required: bool
    description: str = ""
    choices: tuple = ()
    default: str = ""


def fields(schema: dict) -> list[Field]:
    """The form fields of an object schema's properties; a schema without properties gets one
    ``input`` field for the whole input as JSON."""
    properties = schema.get("properties") if isinstance(schema, dict) else None
    if not properties:
        return [Field("input", "json", False, "The run's whole input as JSON.", default="{}")]
    required = set(schema.get("required") or [])
    result = []
    for name, prop in properties.items():
        prop = prop if isinstance(prop, dict) else {}
        kind = prop.get("type") if prop.get("type") in ("string", "integer", "number", "boolean") else "json"
        if "enum" in prop:
            kind = "enum"
        default = prop.get("default", "")
        result.append(Field(name, kind, name in required, str(prop.get("description", "")),
                            tuple(prop.get("enum") or ()),
                            default if isinstance(default, str) else json.dumps(default)))
    return result


class FormErrors(ValueError):
    """What is wrong with a submitted form: {field name: message}; "" names the form as a whole."""

    def __init__(self, errors: dict[str, str]):
        super().__init__("; ".join(f"{name or 'form'}: {message}" for name, message in errors.items()))
        self.errors = errors


def parse(schema: dict, form: Mapping[str, str]) -> dict:
    """The run input from the submitted form. Empty optional fields are left out. Raises FormErrors
    naming every field that cannot be read or that breaks the schema (the API checks the input again)."""
    result: dict = {}
    errors: dict[str, str] = {}
    for field in fields(schema):
        raw = form.get(field.name, "")
        if field.kind == "boolean":
            result[field.name] = raw in ("on", "true", "1")
        elif raw == "" and field.required:
            errors[field.name] = f"{field.name} is required"
        elif raw != "":
            try:
                result[field.name] = _read(field, raw)
            except ValueError:
                errors[field.name] = f"{field.name} must be " + {"json": "valid JSON", "integer": "an integer"}.get(field.kind, "a number")
    if list(result) == ["input"] and not schema.get("properties"):
        if not isinstance(result["input"], dict):
            errors["input"] = "the input must be a JSON object"
        if errors:
            raise FormErrors(errors)
        return result["input"]
    for name, message in schema_errors(schema, result).items():
        errors.setdefault(name, message)
    if errors:
        raise FormErrors(errors)
    return result


def _read(field: Field, raw: str):
    if field.kind == "integer":
        return int(raw)
    if field.kind == "number":
        return float(raw)
    if field.kind == "json":
        return json.loads(raw)
    if field.kind == "enum":
        return next((c for c in field.choices if str(c) == raw), raw)
    return raw


def schema_errors(schema: dict, value: dict) -> dict[str, str]:
    """{field: message} for every way ``value`` breaks the object ``schema`` (the first message per field)."""
    try:
        validator = jsonschema.Draft202012Validator(schema)
        found = sorted(validator.iter_errors(value), key=lambda e: list(e.absolute_path))
    except jsonschema.exceptions.SchemaError:
        return {}  # a published schema was checked at publish; the API has the last word
    errors: dict[str, str] = {}
    for error in found:
        name = str(error.absolute_path[0]) if error.absolute_path else ""
        if not name and error.validator == "required":
            name = error.message.split("'")[1] if "'" in error.message else ""
        errors.setdefault(name, error.message)
    return errors


# The API's input problems read "input['name']…: message" or "input: 'name' is a required property".
_PROBLEM = re.compile(r"^input(?:\['([^']+)'\])?[^:]*: (.*)$")


def api_errors(problems: list[str], message: str) -> dict[str, str]:
    """The API's 400 answer to a start as {field: message} ("" for what names no field)."""
    errors: dict[str, str] = {}
    for problem in problems:
        found = _PROBLEM.match(problem)
        if not found:
            errors.setdefault("", problem)
            continue
        name, text = found.group(1), found.group(2)
        if name is None and text.endswith("is a required property") and "'" in text:
            name = text.split("'")[1]
        errors.setdefault(name or "", text)
    return errors or {"": message}
