"""The tool registry: built-in tools, and project tools from the ``switchyard.tools`` entry points.

A tool is a callable ``tool(args: dict, ctx: StepContext) -> JSON value``; it raises a StepError
subclass to fail (retryable or permanent).
"""

from __future__ import annotations

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


def get_tool(name: str) -> Tool:
    """The tool called ``name``; PermanentStepError if no such tool is installed on this worker."""
    tool = BUILTINS.get(name) or registry.project_tool(name)
    if tool is None:
        raise PermanentStepError(f"tool {name!r} is not installed on this worker", code="unknown_tool")
    return tool
