"""The names of the tools a definition may use, their risk levels and argument schemas, and the model
providers a step may name.

Both the API (to refuse an unknown tool, wrong literal arguments or an unknown model at publish time)
and the workers (to run them) need these, and they never import each other, so they live here.
Built-ins are always present; projects add tools through the ``switchyard.tools`` entry point group,
whose names are listed without importing the tools; a project tool's ``risk`` and ``args_schema`` are
attributes of its callable, read by importing it (``spec_for``).
"""

from __future__ import annotations

import logging
from functools import cache
from importlib.metadata import entry_points
from typing import Any

from orchestrator.policy import ToolSpec

log = logging.getLogger(__name__)

BUILTIN_TOOLS = frozenset({"echo", "sleep", "fail", "http.request", "file.write"})
# Tools only an agent may call: the engine answers them itself.
AGENT_ONLY_TOOLS = frozenset({"human.ask"})
ENTRY_POINT_GROUP = "switchyard.tools"
# The providers a step's `model` may name: `scripted`, `openai` or `openai/<model>` (workers/providers).
MODEL_PROVIDERS = ("scripted", "openai")

# Each built-in's risk level and the JSON Schema of its arguments (checked before every call, and for
# literal arguments at publish; policies decide on the risk).
ANY_OBJECT: dict[str, Any] = {"type": "object"}
BUILTIN_SPECS: dict[str, ToolSpec] = {
    "echo": ToolSpec("echo", "low", ANY_OBJECT),
    "sleep": ToolSpec("sleep", "low", {"type": "object", "properties": {"seconds": {"type": "number", "minimum": 0}}}),
    "fail": ToolSpec("fail", "low", {"type": "object", "properties": {
        "message": {"type": "string"}, "until_attempt": {"type": "integer"}, "after_s": {"type": "number"}}}),
    "file.write": ToolSpec("file.write", "medium", {"type": "object", "required": ["name"], "properties": {
        "name": {"type": "string"}, "text": {"type": "string"}, "base64": {"type": "string"}}}),
    "http.request": ToolSpec("http.request", "high", {
        "type": "object", "required": ["url"],
        "properties": {"url": {"type": "string", "pattern": "^https?://"}, "method": {"type": "string"},
                       "headers": {"type": "object"}, "params": {"type": "object"}, "body": {"type": "string"},
                       "timeout_s": {"type": "number", "exclusiveMinimum": 0}, "raise_for_status": {"type": "boolean"}},
    }),
}


@cache
def project_tool_names() -> frozenset[str]:
    return frozenset(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))


def known_tools() -> frozenset[str]:
    """Every tool a `tool` step may name."""
    return BUILTIN_TOOLS | project_tool_names()


@cache
def _entry_points() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


@cache
def project_tool(name: str) -> Any | None:
    """The callable of project tool ``name`` (None if there is none), imported from its entry point once
    per process; the import's own error if it fails."""
    entry_point = _entry_points().get(name)
    return entry_point.load() if entry_point is not None else None


def spec_for(name: str) -> ToolSpec:
    """The risk level and argument schema of tool ``name``: a built-in's own; a project tool's
    ``risk`` and ``args_schema`` attributes (default: medium, any object). Imports a project tool."""
    if name in BUILTIN_SPECS:
        return BUILTIN_SPECS[name]
    tool = project_tool(name)
    return ToolSpec(name, getattr(tool, "risk", "medium"), getattr(tool, "args_schema", ANY_OBJECT))


def declared_spec(name: str) -> ToolSpec | None:
    """``spec_for(name)`` where it can be read in this process; None for an unknown tool, or a project
    tool that does not import here (its arguments are then checked on the worker, at run time)."""
    if name in BUILTIN_SPECS:
        return BUILTIN_SPECS[name]
    if name not in project_tool_names():
        return None
    try:
        return spec_for(name)
    except Exception:  # noqa: BLE001 - a project's import error must not stop a publish
        log.warning("project tool %r does not import here; its literal arguments are not checked at publish",
                    name, exc_info=True)
        return None
