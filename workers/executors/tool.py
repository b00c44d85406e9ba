"""`tool` steps: render the arguments, call the tool."""

from __future__ import annotations

from typing import Any

from orchestrator import templates
from workers import tools
from workers.context import StepContext


def run(ctx: StepContext) -> Any:
    args = templates.render(ctx.step.args, ctx.template_context)
    result = call_tool(ctx, ctx.step.tool, args)
    return result


def call_tool(ctx: StepContext, name: str, args: dict) -> Any:
    """Call one tool, counting it in the step's usage; shared by tool steps and agent loops."""
    ctx.check()
    ctx.count("tool_calls")
    return tools.get_tool(name)(args, ctx)
