"""`tool` steps: call one tool with rendered arguments, on a worker."""

from __future__ import annotations

from typing import Any, Literal

from orchestrator.steptypes.base import StepType
from orchestrator.steptypes.fields import StepFields


class ToolStep(StepFields):
    type: Literal["tool"]
    tool: str
    args: dict[str, Any] = {}


class Tool(StepType):
    name = "tool"
    definition = ToolStep
    label = "Tool"
    executor = "workers.executors.tool:run"

    def problems(self, step: ToolStep, index: int, known_tools: frozenset[str]) -> list[str]:
        """The tool must be one a `tool` step may name (agent-only tools are not)."""
        if step.tool in known_tools:
            return []
        return [f"steps.{index}.tool: unknown tool {step.tool!r}; known tools: {sorted(known_tools)}"]


STEP_TYPE = Tool()
