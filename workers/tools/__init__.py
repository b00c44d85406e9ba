"""The tool registry: built-in tools, and project tools from the ``switchyard.tools`` entry points.

A tool is a callable ``tool(args: dict, ctx: StepContext) -> JSON value``; it raises a StepError
subclass to fail (retryable or permanent).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from orchestrator import registry
from orchestrator.errors import PermanentStepError
from orchestrator.policy import ToolSpec
from workers.tools import builtin

Tool = Callable[[dict, Any], Any]

BUILTINS: dict[str, Tool] = {
    "echo": builtin.echo,
    "sleep": builtin.sleep,
    "fail": builtin.fail,
    "http.request": builtin.http_request,
    "file.write": builtin.file_write,
}


# Risk levels and argument schemas: the built-ins' own (orchestrator.registry, where the API reads them
# to check literal arguments at publish); a project tool declares its own as the callable's ``risk`` and
# ``args_schema`` attributes (default: medium, any object).
BUILTIN_SPECS: dict[str, ToolSpec] = registry.BUILTIN_SPECS
spec_for = registry.spec_for


# What a model is told about the tool the engine answers itself (workers/executors/agent.py).
HUMAN_ASK = {"name": "human.ask", "description": "Ask a person a question; the run waits for the answer, which "
             "comes back as this tool's result.",
             "parameters": {"type": "object", "required": ["question"], "properties": {"question": {"type": "string"}}}}


def describe(name: str) -> dict[str, Any]:
    """What an agent's model is told about tool ``name``: its name, its description (the callable's
    ``description`` attribute, else its docstring's first paragraph) and its argument schema."""
    if name == HUMAN_ASK["name"]:
        return HUMAN_ASK
    tool = BUILTINS.get(name) or registry.project_tool(name)
    text = getattr(tool, "description", None) or (inspect.getdoc(tool) or "").split("\n\n")[0]
    return {"name": name, "description": " ".join(text.replace("``", "`").split()) or f"the {name} tool",
            "parameters": spec_for(name).args_schema}


def get_tool(name: str) -> Tool:
    """The tool called ``name``; PermanentStepError if no such tool is installed on this worker."""
    tool = BUILTINS.get(name) or registry.project_tool(name)
    if tool is None:
        raise PermanentStepError(f"tool {name!r} is not installed on this worker", code="unknown_tool")
    return tool
