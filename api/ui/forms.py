"""A run's start form generated from a workflow's input schema (JSON Schema) — pure."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass


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


def parse(schema: dict, form: Mapping[str, str]) -> dict:
    """The run input from the submitted form. Empty optional fields are left out; the API validates
    the result against the schema. Raises ValueError naming a field that cannot be read."""
    result: dict = {}
    for field in fields(schema):
        raw = form.get(field.name, "")
        if field.kind == "boolean":
            result[field.name] = raw in ("on", "true", "1")
            continue
        if raw == "" and not field.required:
            continue
        try:
            if field.kind == "integer":
                result[field.name] = int(raw)
            elif field.kind == "number":
                result[field.name] = float(raw)
            elif field.kind == "json":
                result[field.name] = json.loads(raw)
            elif field.kind == "enum":
                result[field.name] = next((c for c in field.choices if str(c) == raw), raw)
            else:
                result[field.name] = raw
        except ValueError:
            raise ValueError(f"{field.name!r} must be {'valid JSON' if field.kind == 'json' else 'a ' + field.kind}") from None
    if list(result) == ["input"] and not schema.get("properties"):
        if not isinstance(result["input"], dict):
            raise ValueError("the input must be a JSON object")
        return result["input"]
    return result
